"""Control-plane speed on a real redis-server (started here on a free port):

1. submitting a 10,000-line manifest (validate, record, enqueue) vs enqueuing 10,000 bare no-op
   tasks on the same broker from one producer;
2. the status query behind `sam3v status --json` on a 10,000-video job (target < 100 ms);
3. per-task overhead of the chunk task machinery (delivery count, status updates, state
   save + load of a real tracker state) vs a bare Celery task round trip, both through a real
   worker process.
Run: .venv/bin/python -m benchmarks.bench_pipeline
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import machine
from tests.services import RedisServer, start_worker, stop_process

N = 10_000


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    server = RedisServer(tmp)
    server.start()
    os.environ.update({"SAM3V_BROKER_URL": server.url, "SAM3V_STORAGE_URL": str(tmp / "store")})
    try:
        from pipeline.core.celery_app import make_app
        from pipeline.control.producer import submit_manifest
        from pipeline.core.redis_conn import connect
        from pipeline.core.settings import get_settings
        from pipeline.core.status import StatusStore

        settings = get_settings()
        app = make_app(settings)
        store = StatusStore(connect(settings))
        manifest = "".join(json.dumps({"video": f"s3://bucket/videos/{i:05d}.mp4", "max_frames": 300}) + "\n"
                           for i in range(N)).encode()

        t0 = time.perf_counter()
        done = submit_manifest(app, store, manifest, "bench.jsonl", default_prompt="dog")
        t_submit = time.perf_counter() - t0

        t0 = time.perf_counter()
        with app.producer_or_acquire() as producer:
            for i in range(N):
                app.send_task("bench.noop", args=[i], queue="bench", producer=producer)
        t_bare = time.perf_counter() - t0

        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            doc = store.status_document(done.job_id)
            times.append(time.perf_counter() - t0)
        assert doc["total"] == N

        print(f"machine: {machine()}; redis-server 127.0.0.1:{server.port}")
        print(f"1. submit {N} lines: {t_submit:.2f} s ({N / t_submit:,.0f} videos/s: parse, record, enqueue)")
        print(f"   bare send_task x {N}: {t_bare:.2f} s ({N / t_bare:,.0f} tasks/s); ratio submit/bare {t_submit / t_bare:.2f}x")
        print(f"2. status query on a {N}-video job: median {statistics.median(times) * 1000:.0f} ms, "
              f"max {max(times) * 1000:.0f} ms (target < 100 ms)")
        overhead(tmp, server)
    finally:
        server.stop()


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
    from workers.state_codec import load_state, save_state
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
from workers.tiny_model import save_tiny_model
from workers.model import load_model
from workers.tracker import VideoTracker
from workers.state_pruning import prune
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
