"""The layers hold: core <- control plane, core <- data plane (workers), and the entry points
(sam3v/) on top. Read from the source (every import statement, those inside functions included),
and checked once more at run time for the heavy stack."""

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


@pytest.mark.parametrize("folder, forbidden", [
    ("pipeline/core", ("workers", "sam3v", "pipeline.control", *HEAVY)),
    ("pipeline/control", ("workers", "sam3v", *HEAVY)),
    ("workers", ("sam3v",)),
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
    """Settings reach lower layers as objects (Settings, workers.runtime.configure), never by
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
