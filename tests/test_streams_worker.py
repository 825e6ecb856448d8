"""A GPU worker with K streams (``sam3v worker --streams 2``: one process, a threads pool, one model
and engine), with real parts: redis-server, a moto S3 server, worker subprocesses, the tiny model.

- Its outputs equal a one-stream (prefork) worker's, byte for byte: masks.json and decoded frames;
  its two streams' tracker steps run at the same time (a trace of the worker's steps and backbone
  calls, ``inject_trace``).
- SIGKILL of the process while both streams are mid-chunk: both chunks are redelivered (and only
  they run twice) and the job ends with the clean run's outputs.
- Out of GPU memory in one stream's tracker step: that chunk runs again alone, not counted against
  its redelivery limit; the other stream's video is not touched; outputs equal the clean run's.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from tests.fault_env import (CHUNKS, VIDEOS, Jobs, Worker, assert_ends_as_the_clean_run, run_clean,
                             wait_for)
from tests.test_pipeline import clips, env, redis_server, s3  # noqa: F401  (module fixtures)

INJECT = Path(__file__).parent / "inject_oom"
TRACE = Path(__file__).parent / "inject_trace"


def with_path(env: dict, folder: Path) -> str:
    """PYTHONPATH with ``folder`` first (its sitecustomize runs in the worker)."""
    return os.pathsep.join(p for p in (str(folder), env.get("PYTHONPATH", "")) if p)


def overlapping_steps(trace: Path) -> int:
    """Pairs of tracker steps of different trackers (videos' chunks) that ran at the same time."""
    steps = [r for r in map(json.loads, trace.read_text().splitlines()) if "step" in r]
    return sum(1 for a in steps for b in steps
               if a["step"] < b["step"] and a["t0"] < b["t1"] and b["t0"] < a["t1"])


@pytest.fixture(scope="module")
def jobs(env, redis_server, s3, clips, tmp_path_factory) -> Jobs:  # noqa: F811
    return Jobs(env, redis_server.url, s3[0], tmp_path_factory.mktemp("streams"))


@pytest.fixture(scope="module")
def cpu(env, jobs):  # noqa: F811
    worker = Worker.start(env, "cpu", "cpu-streams", jobs.workdir)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def clean_job(env, jobs, cpu) -> str:  # noqa: F811
    """The reference: one stream, prefork (as every other test's GPU worker)."""
    gpu = Worker.start(env, "gpu", "gpu-one-stream", jobs.workdir, "--streams", "1")
    try:
        return run_clean(jobs, lambda: gpu.tail() + cpu.tail())
    finally:
        gpu.stop()


def two_streams(env: dict, jobs: Jobs, name: str, **extra_env: str) -> Worker:
    worker = Worker.start({**env, **extra_env}, "gpu", name, jobs.workdir, "--streams", "2")
    wait_for(lambda: "ready." in worker.text(), 180, worker.tail)
    assert "concurrency: 2 (thread" in worker.text(), worker.tail()
    assert not worker.children(), "a K-stream worker is one process (a threads pool), with no prefork child"
    return worker


def test_two_streams_give_the_outputs_of_one(env, jobs, cpu, clean_job, tmp_path):  # noqa: F811
    trace = tmp_path / "trace.jsonl"
    gpu = two_streams(env, jobs, "gpu-two-streams", PYTHONPATH=with_path(env, TRACE), SAM3V_TEST_TRACE=str(trace))
    try:
        job = jobs.submit(VIDEOS)
        assert_ends_as_the_clean_run(jobs, clean_job, job, lambda: gpu.tail() + cpu.tail())
        for vid in VIDEOS:
            assert jobs.deliveries(job, vid) == {c.index: 1 for c in CHUNKS}, vid
        assert overlapping_steps(trace) > 0, "the two streams' tracker steps never ran at the same time"
    finally:
        gpu.stop()


def both_mid_chunk(jobs: Jobs, job: str) -> dict[str, dict] | None:
    """Each video's entry when both have a chunk under way (frames past its start, not done)."""
    entries = {vid: jobs.video(job, vid) for vid in VIDEOS}
    for entry in entries.values():
        k = entry.get("chunks_done") or 0
        if k >= len(CHUNKS) or (entry.get("frames_done") or 0) <= CHUNKS[k].start:
            return None
    return entries


def test_killed_two_stream_worker_redelivers_both_chunks(env, jobs, cpu, clean_job):  # noqa: F811
    gpu = two_streams(env, jobs, "gpu-killed")
    job = jobs.submit(VIDEOS)
    wait_for(lambda: both_mid_chunk(jobs, job), 240, lambda: f"{[jobs.video(job, v) for v in VIDEOS]}\n{gpu.tail()}",
             poll=0.01)
    os.kill(gpu.pid, signal.SIGSTOP)  # hold every thread while the proof is read
    entries = both_mid_chunk(jobs, job)
    assert entries, "both streams were mid-chunk when the process was stopped"
    running = {vid: int(e.get("chunks_done") or 0) for vid, e in entries.items()}
    for vid, k in running.items():
        assert not jobs.exists(f"{job}/{vid}/work/chunks/{k:05d}/done.json"), f"{vid} chunk {k} had finished"
        assert jobs.deliveries(job, vid)[k] == 1
    gpu.kill(gpu.pid, signal.SIGKILL)
    gpu.stop()

    # It restores the unacked messages past the visibility timeout; it looks every second (kombu's
    # own pace is a look every ~100 s, which left the test waiting up to that long past the timeout).
    again = two_streams(env, jobs, "gpu-after-kill", SAM3V_RESTORE_INTERVAL="1")
    try:
        assert_ends_as_the_clean_run(jobs, clean_job, job, lambda: again.tail() + cpu.tail())
        for vid in VIDEOS:
            want = {c.index: 2 if c.index == running[vid] else 1 for c in CHUNKS}
            assert jobs.deliveries(job, vid) == want, f"{vid}: only the chunk in flight ran twice"
    finally:
        again.stop()


def test_out_of_memory_in_one_stream_runs_that_chunk_again_alone(env, jobs, cpu, clean_job, tmp_path):  # noqa: F811
    mark = tmp_path / "oom-injected"
    gpu = two_streams(env, jobs, "gpu-oom", PYTHONPATH=with_path(env, INJECT), SAM3V_TEST_OOM_FRAME="10",
                      SAM3V_TEST_OOM_MARK=str(mark))
    try:
        job = jobs.submit(VIDEOS)
        assert_ends_as_the_clean_run(jobs, clean_job, job, lambda: gpu.tail() + cpu.tail())
        assert mark.exists(), "the out-of-memory error was injected"
        assert gpu.log_count("running it again with the engine to itself") == 1, gpu.tail()
        for vid in VIDEOS:  # the OOM start was not counted: every chunk counts one delivery
            assert jobs.deliveries(job, vid) == {c.index: 1 for c in CHUNKS}, vid
    finally:
        gpu.stop()


def test_a_two_stream_worker_enforces_the_chunk_time_limit_itself(env, jobs, cpu):  # noqa: F811
    """Celery's time limits do nothing in a threads pool: the chunk stops itself at its soft limit
    (SAM3V_TASK_TIME_LIMIT 1 s, soft 1 s; an 8-frame chunk of the tiny model on one thread takes
    longer) and its video fails with the reason, while the worker goes on."""
    gpu = two_streams(env, jobs, "gpu-time-limit", SAM3V_TASK_TIME_LIMIT="1")
    try:
        job = jobs.submit(["dog"])
        doc = jobs.wait_finished(job, 240, lambda: gpu.tail() + cpu.tail())
        (video,) = doc["videos"]
        assert video["status"] == "failed" and "ran past the task time limit (1 s)" in video["error"], video
        assert 0 < (video.get("frames_done") or 0) < 20, "it stopped part-way, at a frame"
        assert gpu.alive()
    finally:
        gpu.stop()
