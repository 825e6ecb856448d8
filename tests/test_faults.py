"""Faults with real parts: redis-server (AOF, ``appendfsync always``), a moto S3 server on 127.0.0.1,
``sam3v worker`` subprocesses (prefork) and the tiny model; helpers in tests/fault_env.py.

The module runs the manifest once without a fault (``clean_job``); a faulted run of the same manifest
must end with the same outputs and the delivery counts the fault explains. Each fault lands at a
seeded moment; the more seeds run with ``-m faults_more``.
"""

from __future__ import annotations

import json
import signal

import pytest

from pipeline.core.planning import plan_backward
from tests.fault_env import (
    CHUNKS,
    FILES,
    FINISH_TIMEOUT,
    VIDEOS,
    Jobs,
    Worker,
    assert_ends_as_the_clean_run,
    assert_same_outputs,
    freeze_in_chunk,
    frozen_mid_chunk,
    run_clean,
    seeds,
)
from tests.test_pipeline import FRAMES, clips, env, redis_server, s3  # noqa: F401  (module fixtures)

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


# --- the backward pass of a visual object (#22) ----------------------------------------------------
# A box on the last frame: the object is tracked back to frame 0 by three backward chunks (frames
# 16-19, then 8-15, then 0-7, each carrying its session to the next) before the three forward ones.
LAST_FRAME_BOX = [{"id": 7, "frame": FRAMES - 1, "box": [400.0, 200.0, 300.0, 300.0]}]
BACKWARD = plan_backward(CHUNKS, FRAMES)
ALL_ONCE = {**{f"b{c.index}": 1 for c in BACKWARD}, **{c.index: 1 for c in CHUNKS}}


@pytest.fixture(scope="module")
def clean_backward_job(jobs, pool) -> str:
    job = jobs.submit(["dog"], objects=LAST_FRAME_BOX)
    doc = jobs.wait_finished(job, FINISH_TIMEOUT, lambda: "\n".join(w.tail() for w in pool))
    assert doc["status"] == "succeeded", doc
    assert jobs.deliveries(job, "dog") == ALL_ONCE
    assert jobs.keys(job) == jobs.expected_keys(job, ["dog"], FILES)
    return job


def test_gpu_child_killed_mid_backward_chunk_resumes_exactly(jobs, pool, clean_backward_job):
    """SIGKILL of the GPU child three frames into the backward pass's middle chunk (frames 15, 14, 13
    tracked; its session came from the chunk of frames 16-19): the chunk runs again from that
    chunk's published state, and the job ends as the clean run did, masks.json byte for byte, the
    videos frame for frame, the visual object on every frame from 0 to 19."""
    gpu, cpu = pool
    job = jobs.submit(["dog"], objects=LAST_FRAME_BOX)
    chunk = BACKWARD[1]
    assert (chunk.index, chunk.start, chunk.stop) == (1, 8, 16)
    child = gpu.child()
    # Before it: one backward chunk done, its 4 frames counted (progress counts both passes).
    frozen = freeze_in_chunk(jobs, child, job, "dog", chunk, 3, before=(1, FRAMES - chunk.stop))
    assert frozen["chunks_done"] == 1 and frozen["frames_done"] == FRAMES - chunk.stop + 3, frozen
    assert frozen["frames_total"] == 2 * FRAMES and frozen["chunks_total"] == 2 * len(CHUNKS), frozen
    assert jobs.exists(f"{job}/dog/work/backward/chunks/00002/done.json")
    assert not jobs.exists(f"{job}/dog/work/backward/chunks/00001/done.json"), "the chunk had not finished"
    assert not jobs.exists(f"{job}/dog/work/chunks/00000/done.json"), "no forward chunk ran yet"
    assert jobs.deliveries(job, "dog") == {"b2": 1, "b1": 1}
    gpu.kill(child, signal.SIGKILL)

    doc = jobs.wait_finished(job, FINISH_TIMEOUT, lambda: gpu.tail() + cpu.tail())
    assert doc["status"] == "succeeded", doc
    assert jobs.deliveries(job, "dog") == {**ALL_ONCE, "b1": 2}, "the killed chunk ran twice, every other once"
    assert jobs.keys(job) == jobs.expected_keys(job, ["dog"], FILES), "no duplicate or stray outputs"
    assert_same_outputs(jobs, clean_backward_job, job, ["dog"])
    masks = json.loads(jobs.read(f"{job}/dog/masks.json"))
    assert [f["frame"] for f in masks["frames"] if any(o["id"] == 7 for o in f["objects"])] == list(range(FRAMES))
    entry = jobs.video(job, "dog")
    assert entry["frames_done"] == entry["frames_total"] == 2 * FRAMES, entry
