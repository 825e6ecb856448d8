"""Control-plane speed on a real redis-server (started here on a free port) and a moto S3 server:

1. `sam3v submit` of an N-line manifest (default 100,000; its lines point at a few real clips in
   the bucket, so the sampled input check passes) vs N bare `send_task` calls on the same broker
   from one producer; peak RSS of the submitting process, N lines vs 1,000 lines;
2. `sam3v status` (and the query behind it) on the N-video job;
3. `sam3v jobs` with 1,000 jobs in Redis;
4. `sam3v cancel` of the N-video job while a cpu and a gpu worker (tiny model) run it: its wall
   time, the messages left queued, and the chunk starts counted after it returned (must be none);
5. per-task overhead of the chunk task machinery (delivery count, status updates, state
   save + load of a real tracker state) vs a bare Celery task round trip, both through a real
   worker process (skip with --skip-overhead).
Run: .venv/bin/python -m benchmarks.bench_pipeline [--lines N] [--skip-overhead]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import VIDEO_720P, machine, start_moto
from tests.services import RedisServer, start_worker, stop_process

BUCKET = "bench"
REPO = Path(__file__).resolve().parents[1]


def write_manifest(path: Path, lines: int) -> Path:
    """``lines`` lines over 4 real objects; ids unique, 300 frames at most each."""
    with open(path, "w") as f:
        for i in range(lines):
            f.write(json.dumps({"id": f"v{i:06d}", "video": f"s3://{BUCKET}/clips/{i % 4}.mp4", "max_frames": 300,
                                "chunk_frames": 8}) + "\n")
    return path


def run_measured(cmd: list[str], env: dict) -> tuple[float, float, subprocess.CompletedProcess | None, str]:
    """(wall s, peak RSS MiB, -, output) of one child process, from its own rusage."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}): {out[-3000:]}")
    return wall, usage.ru_maxrss / 1024, None, out


def timed_median(fn, repeats: int = 5) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=100_000)
    parser.add_argument("--skip-overhead", action="store_true")
    args = parser.parse_args()
    n = args.lines
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    server = RedisServer(tmp)
    server.start()
    moto, aws = start_moto()
    env = {**os.environ, **aws, "SAM3V_BROKER_URL": server.url, "SAM3V_STORAGE_URL": f"s3://{BUCKET}/results",
           "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    os.environ.update(env)
    workers = []
    try:
        import boto3
        from typer.testing import CliRunner

        from pipeline.control.lifecycle import cancel_job
        from pipeline.core.celery_app import make_app
        from pipeline.core.redis_conn import connect
        from pipeline.core.settings import get_settings
        from pipeline.core.status import StatusStore
        from sam3v.cli import app as cli_app
        from tests import media

        s3 = boto3.client("s3", endpoint_url=aws["AWS_ENDPOINT_URL"], region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        clip = media.clip(tmp, 24, source=VIDEO_720P)
        for i in range(4):
            s3.upload_file(str(clip), BUCKET, f"clips/{i}.mp4")
        settings = get_settings()
        app = make_app(settings)
        store = StatusStore(connect(settings))
        print(f"machine: {machine()}; redis-server 127.0.0.1:{server.port}; {n:,} lines")

        # 1. submit vs bare send_task; peak RSS, N lines vs 1,000
        small, big = write_manifest(tmp / "small.jsonl", 1000), write_manifest(tmp / "big.jsonl", n)
        submit = [sys.executable, "-m", "sam3v.cli", "submit", "--prompt", "dog"]
        _, rss_small, _, _ = run_measured(submit + [str(small)], env)
        store.r.delete("cpu")
        t_submit, rss_big, _, out = run_measured(submit + [str(big)], env)
        job = out.strip().splitlines()[-1]
        assert store.summary(job).total == n, out
        t0 = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for i in range(n):
                app.send_task("bench.noop", args=[i], queue="bench", producer=producer)
        t_bare = time.perf_counter() - t0
        store.r.delete("bench")
        print(f"1. `sam3v submit` {n:,} lines: {t_submit:.1f} s (the whole process) vs bare send_task x {n:,}: "
              f"{t_bare:.1f} s: **{t_submit / t_bare:.2f}x** (target <= 1.2x)")
        print(f"   peak RSS of `sam3v submit`: {rss_big:.1f} MiB for {n:,} lines vs {rss_small:.1f} MiB for 1,000: "
              f"**{rss_big / rss_small:.2f}x** (target <= 1.2x)")

        # 2. status
        runner = CliRunner()

        def cli(*argv):
            result = runner.invoke(cli_app, list(argv))
            assert result.exit_code == 0, result.output
            return result

        t_status, _ = timed_median(lambda: cli("status", job))
        t_query, doc = timed_median(lambda: store.status_document(job, 0, 50))
        t_full, _ = timed_median(lambda: store.status_document(job), 3)
        assert doc["total"] == n and len(doc["videos"]) == 50
        print(f"2. `sam3v status` on the {n:,}-video job: median **{t_status * 1000:.0f} ms** (target < 200 ms); "
              f"its query {t_query * 1000:.1f} ms; `--videos all` (every video) {t_full * 1000:.0f} ms")

        # 3. jobs with 1,000 jobs in Redis
        from pipeline.control.producer import submit_manifest

        for i in range(1000 - len(store.jobs(2000))):
            submit_manifest(app, store, json.dumps({"video": f"s3://{BUCKET}/clips/0.mp4"}).encode(), f"j{i}.jsonl",
                            default_prompt="dog")
        store.r.delete("cpu")
        t_jobs, _ = timed_median(lambda: cli("jobs"))
        t_jobs_query, listed = timed_median(lambda: store.jobs(20))
        assert store.r.zcard("sam3v:jobs") >= 1000 and len(listed) == 20
        print(f"3. `sam3v jobs` with {store.r.zcard('sam3v:jobs'):,} jobs in Redis: median **{t_jobs * 1000:.0f} ms** "
              f"(target < 200 ms); its query {t_jobs_query * 1000:.1f} ms")

        # 4. cancel with workers running the big job (resubmitted: the queue was emptied above)
        _, _, _, out = run_measured(submit + [str(big)], env)
        job = out.strip().splitlines()[-1]
        from workers.model.tiny_model import save_tiny_model

        wenv = {**env, "SAM3V_MODEL": str(save_tiny_model(tmp / "tiny")), "SAM3V_TORCH_THREADS": "1",
                "SAM3V_CACHE": str(tmp / "cache")}
        workers = [start_worker(wenv, "gpu", "bench-gpu", tmp / "gpu.log"),
                   start_worker(wenv, "cpu", "bench-cpu", tmp / "cpu.log")]
        deadline = time.monotonic() + 600
        while not chunk_starts(store, job) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert chunk_starts(store, job), "no chunk started within 600 s"
        t0 = time.perf_counter()
        outcome = cancel_job(app, store, job)
        t_cancel = time.perf_counter() - t0
        left = sum(store.r.llen(q) for q in ("cpu", "gpu"))
        started_at_cancel = chunk_starts(store, job)
        summary = store.summary(job)
        # What the workers had reserved or running stops itself: wait until they are idle.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and (store.r.hlen("unacked") or sum(store.r.llen(q) for q in ("cpu", "gpu"))):
            time.sleep(0.5)
        time.sleep(5)
        started_after = chunk_starts(store, job) - started_at_cancel
        print(f"4. cancel of the {n:,}-video job with a cpu and a gpu worker running it: **{t_cancel:.2f} s** "
              f"(target < 10 s); {outcome.stopped:,} videos stopped, {left} messages left queued; job "
              f"{summary.status}; chunk starts after it returned: **{started_after}** (target 0; "
              f"{started_at_cancel} before)")
        if not args.skip_overhead:
            overhead(tmp, server)
    finally:
        for w in workers:
            stop_process(w)
        server.stop()
        moto.stop()


def chunk_starts(store, job: str) -> int:
    """Chunk starts counted so far (each segment_chunk counts its delivery before any work)."""
    total = 0
    for key in store.r.scan_iter(f"sam3v:deliveries:{job}:*", count=1000):
        total += sum(int(v) for v in store.r.hvals(key))
    return total


def overhead(tmp: Path, server: RedisServer) -> None:
    """Round trips through a real worker: bare no-op task vs the chunk machinery with no model work."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    script = tmp / "overhead.py"
    script.write_text(OVERHEAD_SCRIPT)
    done = subprocess.run([sys.executable, str(script), server.url, str(tmp)], env=env, capture_output=True,
                          text=True, timeout=600)
    print(done.stdout.strip() or done.stderr[-2000:])


OVERHEAD_SCRIPT = r'''
import os, sys, time, statistics, subprocess, tempfile
from pathlib import Path
url, tmp = sys.argv[1], Path(sys.argv[2])
os.environ["SAM3V_BROKER_URL"] = url
from celery import Celery
from celery.contrib.testing.worker import start_worker
app = Celery("bench", broker=url, backend=url)
app.conf.update(task_acks_late=True, worker_prefetch_multiplier=1)

@app.task(name="bench.bare")
def bare():
    return 1

@app.task(name="bench.machinery")
def machinery(i):
    # What segment_chunk adds around the model: delivery count, status updates, done marker,
    # and a real tracker state written and read back through storage.
    from pipeline.core.redis_conn import connect
    from pipeline.core.settings import get_settings
    from pipeline.core.status import StatusStore
    from pipeline.core.storage import LocalStorage
    from workers.model.state_codec import load_state, save_state
    store = StatusStore(connect(get_settings()))
    store.count_delivery("bench", "v", i)
    store.update_video("bench", "v", status="processing", frames_done=i)
    storage = LocalStorage(tmp / "store")
    d = tmp / f"state-{i}"
    save_state(TRACKER, d)
    for f in d.iterdir():
        storage.put_file(f, f"bench/v/work/chunks/{i:05d}/state/{f.name}")
    back = tmp / f"back-{i}"
    for f in d.iterdir():
        storage.get_file(f"bench/v/work/chunks/{i:05d}/state/{f.name}", back / f.name)
    load_state(back, LOADED)
    storage.put_bytes(b"{}", f"bench/v/work/chunks/{i:05d}/done.json")
    store.update_video("bench", "v", chunks_done=i)
    return 1

# A real tracker state: the tiny model after 40 frames of a real-looking synthetic clip.
import numpy as np
from workers.model.tiny_model import save_tiny_model
from workers.model.loading import load_model
from workers.model.tracker import VideoTracker
from workers.model.state_pruning import prune
LOADED = load_model(str(save_tiny_model(tmp / "tiny")), "cpu")
TRACKER = VideoTracker(LOADED, ["dog"], 180, 320)
rng = np.random.default_rng(0)
base = rng.integers(0, 255, (180, 320, 3), dtype=np.uint8)
for i in range(40):
    TRACKER.push(i, np.roll(base, i * 3, axis=1))
    prune(TRACKER, i)
from pipeline.core.status import StatusStore
from pipeline.core.redis_conn import connect
from pipeline.core.settings import get_settings
StatusStore(connect(get_settings())).create_job("bench", "bench", {}, [{"id": "v", "video": "x"}], [])

def timed(sig, n):
    out = []
    for i in range(n):
        t0 = time.perf_counter(); sig(i).apply_async().get(timeout=60); out.append(time.perf_counter() - t0)
    return statistics.median(out)

with start_worker(app, pool="solo", perform_ping_check=False):
    timed(lambda i: bare.si(), 3); timed(lambda i: machinery.si(1000 + i), 2)
    t_bare = timed(lambda i: bare.si(), 20)
    t_mach = timed(lambda i: machinery.si(i), 20)
print(f"3. task round trip through a worker: bare {t_bare*1000:.1f} ms, chunk machinery {t_mach*1000:.1f} ms "
      f"(+{(t_mach - t_bare)*1000:.1f} ms a chunk; a default 300-frame chunk of the tiny model computes ~30-90 s)")
'''


if __name__ == "__main__":
    main()
