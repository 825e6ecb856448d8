"""A worker's memory levels off from job to job (issue 19, item 1), with real parts: redis-server, a
moto S3 server, a ``sam3v worker --streams 2`` subprocess (one process: the model, both streams and
their decode/render/encoder threads; it also runs probe and finalize), the tiny model, real clips.

Before glibc's malloc thresholds were fixed (``workers/jobs/allocator.py``) this process grew by about
100 MiB a job with nothing of ours in use growing (freed tensor buffers piled up in malloc's
per-thread arenas): +27% from the 3rd to the 6th job. The bound here is generous; the figure over
20 jobs is benchmarks/bench_worker_memory.py's (README, docs/performance.md).
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.fault_env import Jobs, Worker, wait_for
from tests.services import rss_mib
from tests.test_pipeline import (  # noqa: F401
    BUCKET,
    cli,
    clips,
    env,
    redis_server,
    s3,
    write_manifest,
)

JOBS = 5
SETTLED = 2  # jobs before the first figure compared (first imports, first arenas)
BOUND = 0.15  # growth allowed from job SETTLED to job JOBS


def submit(env: dict, workdir: Path, n: int) -> str:  # noqa: F811
    """Both clips, one 8-frame chunk each: the two streams run at once."""
    lines = [json.dumps({"id": vid, "video": f"s3://{BUCKET}/inputs/{vid}.mp4", "max_frames": 8, "chunk_frames": 8})
             for vid in ("dog", "bedroom")]
    done = cli(env, "submit", write_manifest(workdir / f"memory-{n}.jsonl", lines), "--prompt", "dog")
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_a_two_stream_worker_levels_off_over_jobs(env, redis_server, s3, clips, tmp_path):  # noqa: F811
    jobs = Jobs(env, redis_server.url, s3[0], tmp_path)
    # Time limits for a 2-core machine shared with other runs: what is measured here is memory.
    slow = {"SAM3V_TASK_TIME_LIMIT": "300", "SAM3V_VISIBILITY_TIMEOUT": "330"}
    worker = Worker.start({**env, **slow}, "gpu,cpu", "memory", tmp_path, "--streams", "2")
    try:
        wait_for(lambda: "ready." in worker.text(), 180, worker.tail)
        assert not worker.children(), "one process runs the model, both streams and the cpu tasks"
        sizes = []
        for n in range(1, JOBS + 1):
            job = submit(env, tmp_path, n)
            doc = jobs.wait_finished(job, 600, worker.tail)
            assert doc["status"] == "succeeded", f"{[v.get('error') for v in doc['videos']]}\n{worker.tail()}"
            sizes.append(rss_mib(worker.pid))
        grown = sizes[-1] / sizes[SETTLED - 1] - 1
        assert grown < BOUND, f"RSS after each job (MiB): {[round(s) for s in sizes]}: +{grown:.0%} after job {SETTLED}"
    finally:
        worker.stop()
