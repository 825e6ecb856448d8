"""benchmarks/bench_gpu.py --smoke completes and prints every figure of its matrix.

It runs as the GPU machine it is made for would run it: in a subprocess where pydantic,
pydantic-settings, celery, redis, boto3, PyAV and decord cannot be imported (that machine has only
torch, numpy and a carried transformers), so an import that drags the service stack into the model
path fails here. No timing is asserted: only that each figure is there, measured, with the
detection cap holding.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from benchmarks.bench_gpu import SMOKE

REPO = Path(__file__).resolve().parents[1]
NOT_ON_THE_GPU_MACHINE = ("pydantic", "pydantic_settings", "celery", "redis", "boto3", "av", "decord")


def runner(module: str) -> str:
    """Python source that runs ``module`` as __main__ where the service stack cannot be imported."""
    return f"""
import importlib.abc, runpy, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {NOT_ON_THE_GPU_MACHINE!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not on the GPU machine)", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
sys.argv = [{module!r}, *sys.argv[1:]]
runpy.run_module({module!r}, run_name="__main__")
"""


RUNNER = runner("benchmarks.bench_gpu")


def test_smoke_prints_every_figure_without_the_service_stack():
    proc = subprocess.run([sys.executable, "-c", RUNNER, "--smoke"], cwd=REPO, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, f"bench_gpu.py --smoke exited {proc.returncode}:\n{proc.stderr[-4000:]}"
    records = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    got = {(r["figure"], r["objects"], r["frame_batch"], r["streams"]): r for r in records}
    expected = {("baseline", n, 1, 1) for n in SMOKE["objects"]} | {
        ("engine", n, b, k) for n in SMOKE["objects"] for b in SMOKE["frame_batch"] for k in SMOKE["streams"]
    }
    assert sorted(got) == sorted(expected), proc.stdout
    assert len(records) == len(expected), "one line per figure"
    for key, r in got.items():
        assert "skipped" not in r, (key, r)
        assert r["ms_per_frame_per_stream"] > 0 and r["fps_aggregate"] > 0, (key, r)
        assert len(r["ms_per_frame_streams"]) == r["streams"], (key, r)
        assert r["frames_measured"] >= r["streams"] * r["frame_batch"], (key, r)
        # The cap that makes random weights cost like real ones reached the model on this path.
        assert 0 < r["detections_per_frame"] <= r["objects"], (key, r)
        assert 0 < r["objects_tracked_per_frame"] <= r["objects"], (key, r)
        assert r["card"] == "cpu" and r["peak_gpu_gib"] is None, (key, r)
        assert r["config"]["model"] == "tiny" and r["torch"] and r["transformers"], (key, r)
        if r["figure"] == "engine":
            assert r["speedup_vs_baseline"] > 0, (key, r)
