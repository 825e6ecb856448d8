"""deploy/ is checked without Docker or a cluster: every YAML parses, every `sam3v` command line the
containers run exists in the CLI (options included), every SAM3V_* variable is one the code reads,
every Dockerfile COPY source exists, and the GPU worker gets exactly one GPU and one process."""

from __future__ import annotations

import glob
import importlib.util
import re
import shlex
from pathlib import Path

import pytest
import typer
import yaml  # PyYAML: comes with transformers/huggingface_hub today; list it in the test extra

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
DOCKERFILES = sorted(p for p in DEPLOY.glob("Dockerfile.*") if p.suffix != ".dockerignore")
# k8s manifests name images, not Dockerfiles: this is which Dockerfile builds which image.
IMAGE_DOCKERFILE = {"sam3v-worker": "Dockerfile.worker", "sam3v-control": "Dockerfile.control"}

# SAM3V_* variables the code reads with os.environ directly, not through Settings.
EXTRA_ENV = {"SAM3V_DEBUG", "SAM3V_API_KEYS", "SAM3V_API_KEYS_FILE"}
# Used only while pipeline/core/settings.py is being written; once it exists, its Settings class rules.
FALLBACK_FIELDS = ["broker_url", "redis_url", "storage_url", "model", "url_allowlist", "chunk_seconds",
                   "task_time_limit", "visibility_timeout", "max_redeliveries", "keep_chunks", "url_max_bytes",
                   "url_timeout", "device", "torch_threads"]


# --- helpers ------------------------------------------------------------------------------------

def yaml_files() -> list[Path]:
    return sorted(Path(p) for p in glob.glob(str(DEPLOY / "**" / "*.y*ml"), recursive=True))


def load_all(path: Path) -> list:
    with path.open() as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def compose() -> dict:
    (doc,) = load_all(COMPOSE)
    return doc


def k8s_docs() -> list[dict]:
    return [d for p in sorted(K8S.glob("*.y*ml")) for d in load_all(p)]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, buf = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):  # a comment inside a continued instruction
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def exec_form(args: str) -> list[str]:
    args = args.strip()
    if args.startswith("["):
        return list(yaml.safe_load(args))  # a JSON array is YAML too
    return shlex.split(args)


def image_entrypoint(dockerfile: Path) -> list[str]:
    entry = [a for i, a in dockerfile_instructions(dockerfile) if i == "ENTRYPOINT"]
    return exec_form(entry[-1]) if entry else []


def image_cmd(dockerfile: Path) -> list[str]:
    cmd = [a for i, a in dockerfile_instructions(dockerfile) if i == "CMD"]
    return exec_form(cmd[-1]) if cmd else []


def as_argv(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def sam3v_args(argv: list[str]) -> list[str] | None:
    """The arguments after the `sam3v` executable in argv, or None if argv does not run sam3v."""
    for i, token in enumerate(argv):
        if token == "sam3v" or token.endswith("/sam3v"):
            return argv[i + 1:]
    return None


def cli_root():
    """The click group behind the typer app (typer vendors click: duck-typed, no isinstance)."""
    from sam3v.cli import app

    return typer.main.get_command(app)


def is_group(command) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def check_cli_args(args: list[str], where: str) -> None:
    """The subcommand path names registered commands, and every --option is one of the last one's."""
    command = cli_root()
    path = ["sam3v"]
    rest = list(args)
    while is_group(command) and rest and not rest[0].startswith("-"):
        name = rest.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, f"{where}: `{' '.join(path)} {name}` is not a command (have {sorted(command.commands)})"
        command, path = sub, path + [name]
    options = {"--help"}
    for param in command.params:
        if getattr(param, "param_type_name", None) == "option":
            options.update(param.opts)
            options.update(param.secondary_opts)
    for token in rest:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert flag in options, f"{where}: `{' '.join(path)}` has no option {flag} (has {sorted(options)})"


def settings_env_names() -> set[str]:
    """SAM3V_* names that pipeline.core.settings.Settings reads (prefix + field name, or an alias)."""
    if importlib.util.find_spec("pipeline.core.settings") is None:
        return {f"SAM3V_{name.upper()}" for name in FALLBACK_FIELDS}
    from pydantic import AliasChoices, AliasPath

    from pipeline.core.settings import Settings

    prefix = (Settings.model_config.get("env_prefix") or "").upper()
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias or field.alias
        if alias is None:
            names.add(f"{prefix}{name.upper()}")
        elif isinstance(alias, str):
            names.add(alias.upper())
        elif isinstance(alias, AliasChoices):
            names.update(c.upper() for c in alias.choices if isinstance(c, str))
        elif isinstance(alias, AliasPath):
            names.add(str(alias.path[0]).upper())
    return names


def deploy_text_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.is_file())


# --- tests --------------------------------------------------------------------------------------

def test_deploy_tree_is_there():
    assert COMPOSE.is_file()
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.worker", "Dockerfile.control"}
    assert (DEPLOY / "README.md").is_file()
    assert len(list(K8S.glob("*.yaml"))) >= 5


@pytest.mark.parametrize("path", yaml_files(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_yaml_parses(path):
    docs = load_all(path)
    assert docs, f"{path} is empty"
    if path.parent == K8S:
        for doc in docs:
            assert {"apiVersion", "kind"} <= set(doc), f"{path}: not a k8s object: {list(doc)}"
            if doc["kind"] == "Kustomization":
                assert "namespace" not in doc, f"{path}: manifests are namespace-less"
                for res in doc["resources"]:
                    assert (K8S / res).is_file(), f"{path}: no resource {res}"
                continue
            assert "metadata" in doc and "name" in doc["metadata"], f"{path}: {doc['kind']} without a name"
            assert "namespace" not in doc["metadata"], f"{path}: manifests are namespace-less"


def test_every_sam3v_command_exists_in_the_cli():
    seen = 0
    # Dockerfiles: ENTRYPOINT + CMD
    for dockerfile in DOCKERFILES:
        argv = image_entrypoint(dockerfile) + image_cmd(dockerfile)
        args = sam3v_args(argv)
        assert args is not None, f"{dockerfile.name}: ENTRYPOINT/CMD should run sam3v, got {argv}"
        check_cli_args(args, dockerfile.name)
        seen += 1
    # compose: entrypoint (service or image) + command
    for name, svc in compose()["services"].items():
        entry = svc.get("entrypoint")
        if entry is None and isinstance(svc.get("build"), dict):
            entry = image_entrypoint(ROOT / svc["build"]["dockerfile"])
        argv = as_argv(entry) + as_argv(svc.get("command"))
        args = sam3v_args(argv)
        if args is None:
            assert "build" not in svc, f"compose {name}: a sam3v image that does not run sam3v: {argv}"
            continue  # redis, minio, mc
        check_cli_args(args, f"compose service {name}")
        seen += 1
    # k8s: command (or the image's entrypoint) + args
    for doc in k8s_docs():
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        if not spec:
            continue
        for c in spec.get("containers", []) + spec.get("initContainers", []):
            entry = c.get("command")
            if entry is None:
                image = c["image"].rsplit("/", 1)[-1].split(":")[0]
                assert image in IMAGE_DOCKERFILE, f"k8s {doc['metadata']['name']}: unknown image {c['image']}"
                entry = image_entrypoint(DEPLOY / IMAGE_DOCKERFILE[image])
            argv = as_argv(entry) + as_argv(c.get("args"))
            args = sam3v_args(argv)
            assert args is not None, f"k8s {doc['metadata']['name']}/{c['name']}: does not run sam3v: {argv}"
            check_cli_args(args, f"k8s {doc['metadata']['name']}/{c['name']}")
            seen += 1
    assert seen >= 11


def test_readme_commands_exist_in_the_cli():
    """Every `sam3v ...` in the README's code (fenced blocks and inline spans) is a real command line."""
    text = (DEPLOY / "README.md").read_text()
    fenced = re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    found = 0
    for snippet in fenced + inline:
        for line in snippet.splitlines():
            try:
                tokens = shlex.split(line)
            except ValueError:
                tokens = line.split()
            args = sam3v_args(tokens)
            if args is None:
                continue
            for i, token in enumerate(args):
                if token in ("&&", "||", "|", ";", "\\", "...") or token.startswith(("#", ">")):
                    args = args[:i]
                    break
            check_cli_args(args, f"deploy/README.md: `{line.strip()}`")
            found += 1
    assert found >= 5


def test_every_sam3v_env_var_is_read_by_the_code():
    known = settings_env_names() | EXTRA_ENV
    named = {}
    for path in deploy_text_files():
        for var in re.findall(r"\bSAM3V_[A-Z0-9_]+\b", path.read_text()):
            named.setdefault(var, path.relative_to(ROOT))
    assert named, "deploy/ names no SAM3V_ variable at all"
    unknown = {v: str(p) for v, p in named.items() if v not in known}
    assert not unknown, f"SAM3V_* variables the code does not read: {unknown}"


def test_extra_env_vars_are_really_read_by_the_code():
    sources = "\n".join(p.read_text() for d in ("pipeline", "workers", "sam3v") for p in (ROOT / d).rglob("*.py"))
    missing = sorted(v for v in EXTRA_ENV if f'"{v}"' not in sources and f"'{v}'" not in sources)
    assert not missing, f"not read anywhere in pipeline/, workers/ or sam3v/: {missing}"


def test_core_settings_are_wired_everywhere():
    env = compose()["x-sam3v-env"]
    for var in ("SAM3V_BROKER_URL", "SAM3V_REDIS_URL", "SAM3V_STORAGE_URL", "AWS_ENDPOINT_URL",
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert var in env, f"x-sam3v-env lacks {var}"
    for name, svc in compose()["services"].items():
        if isinstance(svc.get("build"), dict):
            assert "SAM3V_BROKER_URL" in svc["environment"], f"compose {name}: no broker"
    for doc in k8s_docs():
        spec = doc.get("spec", {}).get("template", {}).get("spec")
        for c in (spec or {}).get("containers", []):
            env_names = {e["name"] for e in c.get("env", [])}
            assert "SAM3V_BROKER_URL" in env_names, f"k8s {doc['metadata']['name']}: no broker"
            assert {"configMapRef": {"name": "sam3v-config"}} in c.get("envFrom", [])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_copy_sources_exist(dockerfile):
    copies = 0
    for instr, args in dockerfile_instructions(dockerfile):
        if instr not in ("COPY", "ADD"):
            continue
        parts = exec_form(args)
        if any(p.startswith("--from=") for p in parts):
            continue  # from another build stage, not the context
        sources = [p for p in parts if not p.startswith("--")][:-1]
        assert sources, f"{dockerfile.name}: {instr} {args} has no source"
        for src in sources:
            assert glob.glob(str(ROOT / src)), f"{dockerfile.name}: COPY source {src} is not in the repository"
            copies += 1
    assert copies >= 3
    # BuildKit reads <Dockerfile>.dockerignore beside the Dockerfile: it keeps .venv and .git out of
    # the context, and it ignores everything but what it re-includes: every COPY source must be.
    ignore = dockerfile.with_name(dockerfile.name + ".dockerignore")
    assert ignore.is_file(), f"{ignore.name} is missing"
    kept = {line[1:].strip().rstrip("/").removesuffix("/**") for line in ignore.read_text().splitlines()
            if line.startswith("!")}
    for instr, args in dockerfile_instructions(dockerfile):
        if instr in ("COPY", "ADD") and "--from=" not in args:
            for src in [p for p in exec_form(args) if not p.startswith("--")][:-1]:
                assert src.rstrip("/") in kept, f"{ignore.name} hides COPY source {src}"


def test_worker_image_installs_cuda_torch_and_ffmpeg():
    text = (DEPLOY / "Dockerfile.worker").read_text()
    assert re.search(r"^FROM\s+\$\{CUDA_IMAGE\}|^FROM\s+nvidia/cuda:", text, flags=re.M)
    assert "nvidia/cuda:" in text and "ffmpeg" in text and "python3.11" in text
    assert "download.pytorch.org/whl/cu" in text
    assert '".[worker]"' in text or "'.[worker]'" in text or " .[worker]" in text
    control = (DEPLOY / "Dockerfile.control").read_text()
    assert "python:3.11-slim" in control and "[worker]" not in control and "torch==" not in control


def test_compose_gpu_worker_gets_one_gpu_and_one_process():
    svc = compose()["services"]["gpu-worker"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and d.get("count") == 1
               for d in devices), devices
    argv = as_argv(svc["command"])
    assert argv[argv.index("--concurrency") + 1] == "1"
    assert set(argv[argv.index("--queues") + 1].split(",")) == {"gpu", "interactive-gpu"}
    cpu = as_argv(compose()["services"]["cpu-worker"]["command"])
    assert set(cpu[cpu.index("--queues") + 1].split(",")) == {"cpu", "interactive-cpu"}


def test_compose_services_and_redis_persistence():
    services = compose()["services"]
    assert {"redis", "minio", "createbuckets", "gpu-worker", "cpu-worker", "beat", "flower", "api"} <= set(services)
    redis_cmd = as_argv(services["redis"]["command"])
    assert "--appendonly" in redis_cmd and redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert any(v.endswith(":/data") for v in services["redis"]["volumes"])
    assert services["createbuckets"]["image"].startswith("minio/mc")
    assert "FLOWER_BASIC_AUTH" in services["flower"]["environment"]
    assert any("5555" in str(p) for p in services["flower"]["ports"])
    assert services["beat"]["build"]["dockerfile"].endswith("Dockerfile.control")


def test_k8s_gpu_worker_requests_a_gpu():
    deployments = {d["metadata"]["name"]: d for d in k8s_docs() if d["kind"] == "Deployment"}
    assert {"sam3v-gpu-worker", "sam3v-cpu-worker", "sam3v-beat", "sam3v-flower"} <= set(deployments)
    (gpu,) = deployments["sam3v-gpu-worker"]["spec"]["template"]["spec"]["containers"]
    assert str(gpu["resources"]["limits"]["nvidia.com/gpu"]) == "1"
    args = as_argv(gpu["args"])
    assert args[args.index("--concurrency") + 1] == "1"
    for name in ("sam3v-cpu-worker", "sam3v-beat", "sam3v-flower"):
        for c in deployments[name]["spec"]["template"]["spec"]["containers"]:
            assert "nvidia.com/gpu" not in c.get("resources", {}).get("limits", {}), name


def test_k8s_keda_scales_the_gpu_worker_on_the_gpu_queue():
    (so,) = [d for d in k8s_docs() if d["kind"] == "ScaledObject"]
    assert so["spec"]["scaleTargetRef"]["name"] == "sam3v-gpu-worker"
    (trigger,) = so["spec"]["triggers"]
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == "gpu"
    assert trigger["metadata"]["listLength"] == "2"


def test_k8s_secret_is_a_template_only():
    secrets = [d for d in k8s_docs() if d["kind"] == "Secret"]
    assert secrets
    for s in secrets:
        for key, value in s.get("stringData", {}).items():
            assert "CHANGE-ME" in value, f"secret {key} must be a placeholder"
        assert not s.get("data"), "no base64 values in the template"
    services = [d for d in k8s_docs() if d["kind"] == "Service"]
    assert any(p["port"] == 5555 for s in services for p in s["spec"]["ports"])
