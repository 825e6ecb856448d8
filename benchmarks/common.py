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


def start_moto():
    """A moto S3 server on 127.0.0.1 (a free port) and the AWS environment that reaches it."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per S3 request otherwise
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    moto.start()
    host, port = moto.get_host_and_port()
    aws = {"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    return moto, aws
