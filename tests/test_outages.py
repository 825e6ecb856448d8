"""Outages mid-chunk lose nothing: redis-server killed -9 (AOF, appendfsync always) and restarted,
a worker master killed -9 with its child, S3 cut off mid-upload. Real parts: redis-server, a moto S3
server on 127.0.0.1 reached through a TCP proxy that can cut it off, `sam3v worker` processes, the
tiny model. Each fault is landed while a chunk is between two frames (``freeze_in_chunk`` stops the
GPU child there and the status proves it), and each faulted job must end exactly as a clean run of the
same manifest: the same keys in the bucket, masks.json byte for byte, the videos frame for frame.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from collections import Counter
from urllib.parse import urlparse

import pytest

from tests.fault_env import (CHUNKS, REPORT_INTERVAL, VIDEOS, Jobs, Worker, assert_ends_as_the_clean_run,
                             frozen_mid_chunk, run_clean, seeds, wait_for)
from tests.tcp_proxy import TcpProxy
from tests.test_pipeline import FRAMES, clips, env, redis_server, s3  # noqa: F401  (module fixtures)

HEARTBEAT_TIMEOUT = 30  # the sweeper's threshold here (default 300 s)
_names = itertools.count()  # every worker its own log: a test reads only what its own workers said


@pytest.fixture(scope="module")
def proxy(s3):  # noqa: F811
    _, aws = s3
    target = urlparse(aws["AWS_ENDPOINT_URL"])
    p = TcpProxy(target.hostname, target.port)
    yield p
    p.close()


@pytest.fixture(scope="module")
def outage_env(env, proxy):  # noqa: F811
    # A visibility timeout far past the test's patience: work held by a dead master must come back
    # through the sweeper, not through Redis's redelivery an hour (here 15 min) later.
    return {**env, "AWS_ENDPOINT_URL": proxy.url, "SAM3V_VISIBILITY_TIMEOUT": "900", "SAM3V_TASK_TIME_LIMIT": "800",
            "SAM3V_HEARTBEAT_TIMEOUT": str(HEARTBEAT_TIMEOUT), "SAM3V_SWEEP_INTERVAL": "1"}


@pytest.fixture(scope="module")
def jobs(outage_env, redis_server, s3, clips, tmp_path_factory) -> Jobs:  # noqa: F811
    return Jobs(outage_env, redis_server.url, s3[0], tmp_path_factory.mktemp("outages"))


@pytest.fixture(scope="module")
def cpu(outage_env, jobs):
    worker = Worker.start(outage_env, "cpu", "cpu-outages", jobs.workdir)
    yield worker
    worker.stop()


@pytest.fixture
def gpu(outage_env, jobs):
    """A GPU worker of this test's own (a test may kill it and start another)."""
    started = []

    def start(name: str, count_steps: bool = False) -> Worker:
        started.append(Worker.start(outage_env, "gpu", f"{name}-{next(_names)}", jobs.workdir,
                                    count_steps=count_steps))
        return started[-1]

    yield start
    for worker in started:
        if worker.alive():
            worker.stop()


@pytest.fixture(scope="module")
def clean_run(jobs, cpu, outage_env) -> tuple[str, Counter]:
    """The clean job, and how often each model frame went through the model in it."""
    worker = Worker.start(outage_env, "gpu", "gpu-clean", jobs.workdir, count_steps=True)
    try:
        job = run_clean(jobs, lambda: worker.tail() + cpu.tail())
        return job, Counter(frame for _, frame in worker.steps())
    finally:
        worker.stop()


@pytest.fixture(scope="module")
def clean_job(clean_run) -> str:
    return clean_run[0]


# Seed 8 stops chunk 1 at frame 10: six of its frames are left to run through the outage.
@pytest.mark.parametrize("seed", seeds(ci=[8], more=[1, 3, 11]))
def test_redis_killed_mid_chunk_and_restarted_loses_nothing(seed, jobs, cpu, gpu, clean_run, redis_server):  # noqa: F811
    """kill -9 of redis-server while a chunk runs; restarted from its AOF on the same port: the chunk
    goes on to its end (its progress writes are best effort), records its outcome once Redis is back,
    and the job finishes, no frame through the model twice. (Before: the chunk's progress write
    raised, the failure could not be recorded either, Celery acked the task, and the video stayed
    ``processing`` forever.)"""
    clean_job, clean_steps = clean_run
    # The step log is what the checks below count: it must see each frame once per video.
    assert clean_steps == Counter({frame: len(VIDEOS) for frame in range(FRAMES)}), clean_steps
    worker = gpu("gpu", count_steps=True)
    job = jobs.submit(VIDEOS)
    vid, k, child = frozen_mid_chunk(jobs, worker, job, seed)
    stepped = len(worker.steps())
    redis_server.kill()
    assert redis_server.proc.returncode == -signal.SIGKILL
    # Past the report interval, the chunk's next frame writes its progress (and asks whether it is
    # still wanted) at once: both meet the outage, and must not stop the chunk.
    time.sleep(REPORT_INTERVAL + 0.1)
    os.kill(child, signal.SIGCONT)
    # The chunk runs on to its end without Redis, in the same process: its done marker reaches
    # storage (S3 is up) while Redis is still down, and it said that its progress went unrecorded.
    done = f"{job}/{vid}/work/chunks/{k:05d}/done.json"
    wait_for(lambda: jobs.exists(done), 120,
             lambda: f"chunk {k} of {vid} did not run to its end while Redis was down\n" + worker.tail(), poll=0.2)
    assert worker.log_count(f"progress of {job}/{vid} not recorded") >= 1, worker.tail()
    ran_on = worker.steps()[stepped:]
    assert ran_on and {pid for pid, _ in ran_on} == {child}, f"the chunk went on in its process: {ran_on}"
    assert ran_on[-1][1] == CHUNKS[k].stop - 1, f"to its last frame: {ran_on}"
    redis_server.start()
    assert_ends_as_the_clean_run(jobs, clean_job, job, lambda: worker.tail() + cpu.tail())
    # No frame was computed again: each went through the model as often as in the clean run.
    assert Counter(frame for _, frame in worker.steps()) == clean_steps
    for other in VIDEOS:
        assert jobs.deliveries(job, other) == {c.index: 1 for c in CHUNKS}, f"{other}: no chunk ran twice"
        assert not jobs.video(job, other).get("requeued"), "finished without the sweeper"


@pytest.mark.parametrize("seed", seeds(ci=[5], more=[2, 9, 13]))
def test_worker_master_killed_mid_chunk_is_swept_and_requeued(seed, jobs, cpu, gpu, clean_job):
    """kill -9 of a GPU worker's master and child mid-chunk: the message stays in Redis's unacked set
    until the visibility timeout (15 min here, 1 h by default). The sweeper (in the CPU worker's
    master) sees the video silent past the heartbeat timeout with nothing queued and requeues it; a
    new GPU worker runs it, skipping the chunks already done."""
    first = gpu("gpu-a")
    job = jobs.submit(VIDEOS)
    vid, k, child = frozen_mid_chunk(jobs, first, job, seed)
    first.kill(first.pid, signal.SIGKILL)
    first.kill(child, signal.SIGKILL)
    second = gpu("gpu-b")
    assert_ends_as_the_clean_run(jobs, clean_job, job, lambda: second.tail() + cpu.tail())
    entry = jobs.video(job, vid)
    assert (entry["attempt"], entry["requeued"]) == (1, 1), entry
    # Whichever live master held the sweeper's lock did it: the CPU worker's or the new GPU worker's.
    said = f"job {job} video {vid}: no sign of life"
    assert cpu.log_count(said) + second.log_count(said) == 1, cpu.tail() + second.tail()
    want = {c.index: 2 if c.index == k else 1 for c in CHUNKS}
    assert jobs.deliveries(job, vid) == want, "the lost chunk ran twice, chunks done before it once"


@pytest.mark.parametrize("seed", seeds(ci=[6], more=[4, 10, 12]))
def test_storage_cut_off_mid_chunk_is_retried_and_loses_nothing(seed, jobs, cpu, gpu, clean_job, proxy):
    """S3 unreachable (connections reset) from a moment inside a chunk: its uploads fail, the task
    runs again later instead of failing its video (before: 'internal error ... EndpointConnectionError',
    the video failed), and once storage is back the job ends as the clean run did."""
    worker = gpu("gpu")
    job = jobs.submit(VIDEOS)
    vid, k, child = frozen_mid_chunk(jobs, worker, job, seed)
    refused = proxy.refused
    proxy.cut()
    try:
        os.kill(child, signal.SIGCONT)
        wait_for(lambda: worker.log_count("storage unreachable"), 120,
                 lambda: "no task met the outage\n" + worker.tail())
        assert proxy.refused > refused
    finally:
        proxy.restore()
    assert_ends_as_the_clean_run(jobs, clean_job, job, lambda: worker.tail() + cpu.tail())
    assert worker.log_count("running it again later") >= 1
    for other in VIDEOS:  # an outage is not a crash: the retried chunk's delivery is not counted twice
        assert jobs.deliveries(job, other) == {c.index: 1 for c in CHUNKS}, other
