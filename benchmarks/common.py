"""Helpers for benchmarks: each compares against a baseline run side by side in the same process."""

from __future__ import annotations

import os
import platform
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SAM3V_SHARED", REPO.parent / "shared"))
VIDEO_720P = SHARED / "videos" / "01_dog.mp4"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} {platform.python_version()}"


def best_of(fn, repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), times


def interleaved(ours, baseline, repeats: int = 3) -> tuple[float, float]:
    """Alternate the two so drifting machine load hits both alike; report the medians."""
    a, b = [], []
    for _ in range(repeats):
        for fn, sink in ((baseline, b), (ours, a)):
            start = time.perf_counter()
            fn()
            sink.append(time.perf_counter() - start)
    return statistics.median(a), statistics.median(b)
