"""Faults with real parts: redis-server (AOF, ``appendfsync always``), a moto S3 server on 127.0.0.1,
``sam3v worker`` subprocesses (prefork) and the tiny model; helpers in tests/fault_env.py.

The module runs the manifest once without a fault (``clean_job``); a faulted run of the same manifest
must end with the same outputs and the delivery counts the fault explains. Each fault lands at a
seeded moment; the more seeds run with ``-m faults_more``.
"""

from __future__ import annotations

import signal

import pytest

from tests.fault_env import (CHUNKS, VIDEOS, Jobs, Worker, assert_ends_as_the_clean_run, frozen_mid_chunk,
                             run_clean, seeds)
from tests.test_pipeline import clips, env, redis_server, s3  # noqa: F401  (module fixtures)

UP_TIMEOUT = "Timed out waiting for UP message"  # Celery's log line when it kills a child that is slow to start


@pytest.fixture(scope="module")
def jobs(env, redis_server, s3, clips, tmp_path_factory) -> Jobs:  # noqa: F811
    return Jobs(env, redis_server.url, s3[0], tmp_path_factory.mktemp("faults"))


@pytest.fixture(scope="module")
def pool(env, jobs):  # noqa: F811
    """One GPU and one CPU worker for the module (a test that kills a master starts its own)."""
    gpu = Worker.start(env, "gpu", "gpu-faults", jobs.workdir)
    cpu = Worker.start(env, "cpu", "cpu-faults", jobs.workdir)
    yield gpu, cpu
    gpu.stop()
    cpu.stop()


@pytest.fixture(scope="module")
def clean_job(jobs, pool) -> str:
    return run_clean(jobs, lambda: "\n".join(w.tail() for w in pool))


@pytest.mark.parametrize("seed", seeds(ci=[7, 14], more=[2, 4, 5, 6, 12, 15]))
def test_gpu_child_killed_mid_chunk_is_replaced_and_the_job_finishes(seed, jobs, pool, clean_job):
    """SIGKILL of the GPU worker's prefork child (as the OOM killer does) between two frames of a
    chunk: the same master starts a new child, which has SAM3V_WORKER_START_TIMEOUT (not Celery's
    4 s) to load the model and report up; the chunk's task, requeued (acks_late,
    reject_on_worker_lost), and whatever the master took meanwhile run on it; the job ends as the
    clean run did. (Before: every new child was killed 4 s after its fork, and the job never ended.)"""
    gpu, cpu = pool
    job = jobs.submit(VIDEOS)
    vid, k, child = frozen_mid_chunk(jobs, gpu, job, seed)
    gpu.kill(child, signal.SIGKILL)

    assert_ends_as_the_clean_run(jobs, clean_job, job, lambda: (
        f"the GPU worker's child was killed in chunk {k} of {vid}; Celery logged '{UP_TIMEOUT}' "
        f"{gpu.log_count(UP_TIMEOUT)} times\n" + gpu.tail() + cpu.tail()))
    assert gpu.alive() and cpu.alive(), "the same worker masters finished the job"
    assert gpu.child() != child
    assert gpu.log_count(UP_TIMEOUT) == 0
    # The master took a message (the requeued chunk, or the next one queued) before its new child was
    # up, held it meanwhile, and handed it over once the child was (every chunk delivered and done).
    _, killed, after_kill = gpu.text().partition(f"pid:{child} exited")
    assert killed and -1 < after_kill.find("] received") < after_kill.find("process ready in"), gpu.tail()
    for other in VIDEOS:
        want = {c.index: 2 if (other, c.index) == (vid, k) else 1 for c in CHUNKS}
        assert jobs.deliveries(job, other) == want, f"{other}: the killed chunk ran twice, every other once"
