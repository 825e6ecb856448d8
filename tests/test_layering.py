"""The layers hold: core <- control plane, core <- data plane (workers), and the entry points
(sam3v/) on top; inside the data plane, its rooms import one way (media <- model <- chunks <- jobs);
and no import circle anywhere in pipeline/, workers/ and sam3v/. Read from the source (every import
statement, those inside functions included), and checked once more at run time for the heavy stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "decord", "av", "safetensors", "pycocotools", "ffmpeg")


def imports(path: Path, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, module) for every import in ``path`` (a module of the tree at ``root``), at any depth;
    relative imports resolved."""
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            # `from pipeline import control` imports pipeline.control
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def modules_under(folder: str, root: Path = ROOT) -> list[Path]:
    return sorted((root / folder).rglob("*.py"))


def offenders(folder: str, forbidden: tuple[str, ...], root: Path = ROOT) -> list[str]:
    bad = []
    for path in modules_under(folder, root):
        for line, module in imports(path, root):
            if any(module == f or module.startswith(f + ".") for f in forbidden):
                bad.append(f"{path.relative_to(root)}:{line} imports {module}")
    return bad


# The data plane's rooms, bottom first: each imports only the rooms before it (and pipeline.core).
ROOMS = ("media", "model", "chunks", "jobs")


@pytest.mark.parametrize("folder, forbidden", [
    ("pipeline/core", ("workers", "sam3v", "pipeline.control", *HEAVY)),
    ("pipeline/control", ("workers", "sam3v", *HEAVY)),
    ("workers", ("sam3v",)),
    # Writing outputs never needs the model's stack: FrameObjects is media's own record.
    ("workers/media", ("workers.model", "workers.chunks", "workers.jobs", "torch", "transformers", "safetensors")),
    ("workers/model", ("workers.chunks", "workers.jobs")),
    ("workers/chunks", ("workers.jobs",)),
])
def test_no_import_points_upward_or_at_the_heavy_stack(folder, forbidden):
    assert modules_under(folder), f"{folder}: no modules found"
    assert offenders(folder, forbidden) == []


def test_the_walk_sees_imports_inside_functions(tmp_path):
    """The check above would be blind if nested imports were missed: it must find these. The probe
    tree is a copy of the layout under tmp_path, never the source tree (a killed run would leave a
    probe there that fails the check above in every later run)."""
    core = tmp_path / "pipeline" / "core"
    core.mkdir(parents=True)
    (core / "_layering_probe.py").write_text("def f():\n    from workers import tasks\n    import torch\n"
                                             "    from .. import control\n")
    assert offenders("pipeline/core", ("workers", "torch", "pipeline.control"), root=tmp_path) == [
        "pipeline/core/_layering_probe.py:2 imports workers",
        "pipeline/core/_layering_probe.py:2 imports workers.tasks",
        "pipeline/core/_layering_probe.py:3 imports torch",
        "pipeline/core/_layering_probe.py:4 imports pipeline.control",
    ]


def test_nothing_below_the_entry_points_assigns_to_os_environ():
    """Settings reach lower layers as objects (Settings, workers.jobs.context.configure), never by
    editing the process environment."""
    bad = []
    for folder in ("pipeline", "workers"):
        for path in modules_under(folder):
            for node in ast.walk(ast.parse(path.read_text())):
                targets = node.targets if isinstance(node, ast.Assign) else \
                    [node.target] if isinstance(node, ast.AugAssign | ast.AnnAssign) else []
                writes = [t for t in targets if isinstance(t, ast.Subscript) and "environ" in ast.unparse(t.value)]
                calls = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and \
                    node.func.attr in ("pop", "update", "setdefault", "clear") and "environ" in ast.unparse(node.func.value)
                if writes or calls:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert bad == []


def test_the_control_plane_and_the_entry_points_import_without_the_heavy_stack():
    code = (
        "import sys, pkgutil, importlib, pipeline\n"
        "for m in pkgutil.walk_packages(pipeline.__path__, 'pipeline.'):\n"
        "    importlib.import_module(m.name)\n"
        "import sam3v.cli, sam3v.api\n"
        "sam3v.api.create_app\n"
        f"heavy = [m for m in {HEAVY + ('workers',)!r} if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr


def test_the_data_plane_lives_in_its_rooms():
    """A module directly under workers/ would belong to no room and escape the one-way rule."""
    loose = sorted(p.name for p in (ROOT / "workers").glob("*.py") if p.name != "__init__.py")
    rooms = sorted(p.name for p in (ROOT / "workers").iterdir() if p.is_dir() and p.name != "__pycache__")
    assert (loose, rooms) == ([], sorted(ROOMS))


def module_graph(root: Path = ROOT, tops: tuple[str, ...] = ("pipeline", "workers", "sam3v")) -> dict[str, set[str]]:
    """module -> the tree's modules it imports (at any depth). ``from pkg import sub`` is an edge to
    ``pkg.sub`` when that is a module, else to ``pkg``, as import-linter reads it: a package's
    ``__init__`` re-exporting its parts is not a circle with them."""
    paths = {}
    for top in tops:
        for path in (root / top).rglob("*.py"):
            parts = path.relative_to(root).with_suffix("").parts
            paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {}
    for name, path in paths.items():
        edges = set()
        for _, module in imports(path, root):
            while module and module not in paths:
                module = module.rpartition(".")[0]
            if module and module != name:
                edges.add(module)
        graph[name] = edges
    # `from pkg import sub` listed both pkg and pkg.sub: keep pkg only when nothing below it is named.
    for name, edges in graph.items():
        graph[name] = {m for m in edges if not any(o.startswith(m + ".") for o in edges)}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected parts of more than one module (Tarjan), each sorted."""
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                found.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_anywhere():
    graph = module_graph()
    assert len(graph) > 100, "the walk found too few modules"
    assert circles(graph) == []


def test_the_circle_check_sees_a_circle_through_a_nested_import(tmp_path):
    pkg = tmp_path / "workers" / "jobs"
    pkg.mkdir(parents=True)
    (tmp_path / "workers" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "context.py").write_text("def app():\n    import workers.jobs.tasks\n")
    (pkg / "tasks.py").write_text("from workers.jobs.context import app\n")
    (pkg / "policy.py").write_text("from workers.jobs import tasks\n")
    assert circles(module_graph(tmp_path, ("workers",))) == [["workers.jobs.context", "workers.jobs.tasks"]]


def test_the_media_room_imports_without_torch():
    code = (
        "import sys, pkgutil, importlib, workers.media\n"
        "for m in pkgutil.walk_packages(workers.media.__path__, 'workers.media.'):\n"
        "    importlib.import_module(m.name)\n"
        "heavy = [m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
