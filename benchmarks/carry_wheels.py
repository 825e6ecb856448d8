"""Download the wheels ``import transformers`` needs, for the GPU machine that has none of them.

The GPU machine (see ``run_bench_gpu_device.sh``) cannot reach a package index. Its own
transformers is older than ours, and so may be what ours needs (huggingface_hub, tokenizers, ...).
This walks transformers' requirements, as installed here, and downloads each distribution of that
closure at the version installed here: pure-Python wheels as they are, compiled ones for the GPU
machine's Python and platform (``--python-version``, ``--platform``). torch and numpy are the
machine's own. Run by ``run_bench_gpu_device.sh --prepare``; prints what it downloaded.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

THE_MACHINES_OWN = {"torch", "numpy"}
MANYLINUX = [f"manylinux_2_{n}_x86_64" for n in (39, 35, 34, 31, 28, 27, 24, 17)] + ["manylinux2014_x86_64",
                                                                                      "manylinux1_x86_64"]


def closure(root: str) -> dict[str, tuple[str, bool]]:
    """Each distribution ``root`` needs here (itself included): name -> (version, compiled)."""
    found: dict[str, tuple[str, bool]] = {}
    todo = [root]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found or name in THE_MACHINES_OWN:
            continue
        dist = metadata.distribution(name)
        compiled = any(str(f).endswith((".so", ".pyd")) for f in dist.files or [])
        found[name] = (dist.version, compiled)
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return found


def download(name: str, version: str, compiled: bool, to: Path, python: str) -> bool:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(to),
           f"{name}=={version}"]
    if compiled:
        cmd += ["--python-version", python, "--implementation", "cp"]
        for platform in MANYLINUX:
            cmd += ["--platform", platform]
    return subprocess.run(cmd).returncode == 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("directory", type=Path)
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python (compiled wheels)")
    args = p.parse_args()
    args.directory.mkdir(parents=True, exist_ok=True)
    missing = []
    for name, (version, compiled) in sorted(closure("transformers").items()):
        ok = download(name, version, compiled, args.directory, args.python_version)
        print(f"{'compiled' if compiled else 'pure'} {name}=={version}{'' if ok else ' NOT DOWNLOADED'}")
        if not ok:
            missing.append(name)
    if missing:
        print(f"no wheel for {', '.join(missing)}: the GPU machine's own versions will be used", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
