"""Resident memory of a worker's model process over many jobs: it must level off, not grow per job.

A real ``sam3v worker`` (all queues: probe, chunks and finalize run in the process that runs the
model) on a real redis-server and a moto S3 server, the tiny model, short real clips. Each job is
one manifest of ``--videos`` clips (01_dog.mp4 and bedroom.mp4, ``--frames`` frames each, chunks of
``--chunk`` frames). After each job ends, the resident memory (VmRSS) of the process that runs the
model is read: the prefork child (``--concurrency 1``; ``--max-tasks-per-child`` set high so no
recycling hides a leak, and the child must stay the same process throughout), or the worker
process itself with ``--streams 2`` (a threads pool).

Target: after the third job, growth under 5% over the remaining jobs (20 by default).

Run: .venv/bin/python -m benchmarks.bench_worker_memory [--pool prefork|streams|both] [--jobs 20]
     [--env NAME=VALUE ...]   (e.g. --env MALLOC_ARENA_MAX=1, for experiments)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from benchmarks.common import REPO, SHARED, machine, start_moto
from tests.fault_env import Worker
from tests.services import RedisServer, rss_mib

BUCKET = "bench"
CLIPS = ("01_dog.mp4", "bedroom.mp4")
SETTLE_AFTER = 3  # jobs before the measured window (first imports, the allocator's first arenas)
TARGET = 0.05  # growth over the window


def model_process(worker: Worker, streams: bool) -> int:
    """The pid that runs the model: the worker itself (threads pool) or its one prefork child."""
    return worker.pid if streams else worker.child(timeout=300)


@dataclass
class Deployment:
    """redis-server + moto + the clips in the bucket; ``env`` for workers and the producer."""

    env: dict
    manifest: bytes
    stop: Callable[[], None]


def deploy(tmp: Path, frames: int, chunk: int, videos: int, model_dir: Path) -> Deployment:
    import boto3

    from tests import media

    server = RedisServer(tmp)
    server.start()
    moto, aws = start_moto()
    s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=BUCKET)
    lines = []
    for i in range(videos):
        name = CLIPS[i % len(CLIPS)]
        clip = media.clip(tmp, frames, source=SHARED / "videos" / name)
        s3.upload_file(str(clip), BUCKET, f"inputs/{i}.mp4")
        lines.append(json.dumps({"id": f"v{i}", "video": f"s3://{BUCKET}/inputs/{i}.mp4", "chunk_frames": chunk}))
    env = {**os.environ, **aws, "SAM3V_BROKER_URL": server.url, "SAM3V_STORAGE_URL": f"s3://{BUCKET}/results",
           "SAM3V_MODEL": str(model_dir), "SAM3V_TORCH_THREADS": "1", "SAM3V_CACHE": str(tmp / "cache"),
           "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}

    def stop() -> None:
        server.stop()
        moto.stop()

    return Deployment(env, ("\n".join(lines) + "\n").encode(), stop)


def run_jobs(dep: Deployment, jobs: int, timeout: float, after_job: Callable[[int, str], None],
             alive: Callable[[], bool] = lambda: True) -> None:
    """Submit ``jobs`` jobs one after the other, each once the one before has ended (while ``alive()``)."""
    from pipeline.control.producer import submit_manifest
    from pipeline.core.celery_app import make_app
    from pipeline.core.redis_conn import connect
    from pipeline.core.settings import Settings
    from pipeline.core.status import StatusStore

    settings = Settings(broker_url=dep.env["SAM3V_BROKER_URL"], storage_url=dep.env["SAM3V_STORAGE_URL"])
    app, store = make_app(settings), StatusStore(connect(settings))
    for n in range(1, jobs + 1):
        job = submit_manifest(app, store, dep.manifest, f"memory-{n}.jsonl", default_prompt="dog").job_id
        end = time.monotonic() + timeout
        while (status := store.summary(job).status) not in ("succeeded", "partial", "failed", "cancelled"):
            if time.monotonic() > end or not alive():
                raise RuntimeError(f"job {n} ({job}) did not end within {timeout:.0f} s or the worker died: {status}")
            time.sleep(0.25)
        if status != "succeeded":
            raise RuntimeError(f"job {n} ({job}) ended {status}: {store.status_document(job)['videos']}")
        after_job(n, job)


def measure(pool: str, dep: Deployment, tmp: Path, jobs: int, extra_env: dict[str, str],
            timeout: float) -> list[float]:
    """RSS (MiB) of the model process after each job."""
    streams = pool == "streams"
    extra = ("--streams", "2") if streams else ("--streams", "1", "--max-tasks-per-child", "100000")
    worker = Worker.start({**dep.env, **extra_env}, "interactive-gpu,interactive-cpu,gpu,cpu", f"mem-{pool}", tmp,
                          *extra)
    sizes: list[float] = []
    try:
        pid = model_process(worker, streams)

        def after_job(n: int, job: str) -> None:
            time.sleep(1.0)  # the last task's acknowledgement and clean-up
            if model_process(worker, streams) != pid:
                raise RuntimeError(f"the model process changed after job {n}: the measurement would restart")
            sizes.append(rss_mib(pid))
            print(f"  {pool} job {n:2d} ({job}): {sizes[-1]:7.1f} MiB", flush=True)

        run_jobs(dep, jobs, timeout, after_job, lambda: worker.alive() and (streams or pid in worker.children()))
    except BaseException:
        print(worker.tail(), file=sys.stderr)
        raise
    finally:
        worker.stop()
    return sizes


def growth(sizes: list[float], settle: int = SETTLE_AFTER) -> float:
    """Relative growth from the ``settle``-th job to the last."""
    return sizes[-1] / sizes[settle - 1] - 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pool", choices=("prefork", "streams", "both"), default="both")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--videos", type=int, default=2, help="videos a job")
    parser.add_argument("--frames", type=int, default=10, help="frames a video")
    parser.add_argument("--chunk", type=int, default=8, help="frames a chunk")
    parser.add_argument("--timeout", type=float, default=600, help="seconds a job may take")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment of the worker (experiments)")
    args = parser.parse_args()
    if args.jobs <= SETTLE_AFTER:
        parser.error(f"--jobs must be above {SETTLE_AFTER}")
    extra_env = dict(item.split("=", 1) for item in args.env)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    from workers.model.tiny_model import save_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="bench-worker-memory-"))
    dep = deploy(tmp, args.frames, args.chunk, args.videos, save_tiny_model(tmp / "tiny"))
    print(f"machine: {machine()}; commit {commit}; {args.jobs} jobs of {args.videos} videos x {args.frames} frames "
          f"(chunks of {args.chunk}); tiny model; worker env {extra_env or '-'}")
    results = {}
    try:
        for pool in (("prefork", "streams") if args.pool == "both" else (args.pool,)):
            sizes = measure(pool, dep, tmp, args.jobs, extra_env, args.timeout)
            results[pool] = sizes
            g = growth(sizes)
            print(f"{pool}: RSS after job {SETTLE_AFTER} {sizes[SETTLE_AFTER - 1]:.1f} MiB -> after job {args.jobs} "
                  f"{sizes[-1]:.1f} MiB: **{g * 100:+.1f}%** (target < {TARGET * 100:.0f}%); first job "
                  f"{sizes[0]:.1f} MiB, peak {max(sizes):.1f} MiB", flush=True)
    finally:
        dep.stop()
    print(json.dumps({"commit": commit, "jobs": args.jobs, "env": extra_env, "rss_mib": results}))


if __name__ == "__main__":
    main()
