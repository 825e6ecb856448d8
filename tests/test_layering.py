"""The control plane must import without the heavy stack (API, producer and beat images stay small)."""

from __future__ import annotations

import subprocess
import sys


def test_pipeline_imports_without_torch_decord_or_transformers():
    code = (
        "import sys, pkgutil, importlib, pipeline\n"
        "for m in pkgutil.walk_packages(pipeline.__path__, 'pipeline.'):\n"
        "    importlib.import_module(m.name)\n"
        "heavy = [m for m in ('torch', 'decord', 'transformers', 'av') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
