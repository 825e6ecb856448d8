"""Blame (issue 20): a fault of the worker (its model, its disk) fails no video. The task goes back
to the queue, not counted against SAM3V_MAX_REDELIVERIES; the worker takes itself out of service
(its log, its record ``sam3v:worker:*``) and exits non-zero; a healthy worker finishes the job.
Real redis-server, moto S3 server, `sam3v worker` processes and the tiny model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import redis

from tests.fault_env import (
    CHUNKS,
    VIDEOS,
    Jobs,
    Worker,
    assert_ends_as_the_clean_run,
    run_clean,
    wait_for,
)
from tests.test_pipeline import clips, env, redis_server, s3  # noqa: F401  (module fixtures)

INJECT = Path(__file__).parent / "inject_disk_full"
OUT_OF_SERVICE = 3  # workers.jobs.service.EXIT_OUT_OF_SERVICE


@pytest.fixture(scope="module")
def roomy(env) -> dict:  # noqa: F811
    """test_pipeline's settings with time limits for a loaded 2-core host (a clean run must not
    fail a chunk on time: these tests prove that no video fails)."""
    return {**env, "SAM3V_TASK_TIME_LIMIT": "150", "SAM3V_VISIBILITY_TIMEOUT": "160"}


@pytest.fixture(scope="module")
def jobs(roomy, redis_server, s3, clips, tmp_path_factory) -> Jobs:  # noqa: F811
    return Jobs(roomy, redis_server.url, s3[0], tmp_path_factory.mktemp("blame"))


@pytest.fixture(scope="module")
def cpu(jobs):
    worker = Worker.start(jobs.env, "cpu", "cpu-blame", jobs.workdir)
    yield worker
    worker.stop()


def _records(url: str, node: str) -> list[dict]:
    r = redis.Redis.from_url(url)
    return [json.loads(v) for k in r.keys("sam3v:worker:*") if (v := r.get(k)) and node in k.decode()]


def _exits(worker: Worker, timeout: float) -> int:
    wait_for(lambda: not worker.alive(), timeout, worker.tail, poll=0.2)
    return worker.proc.returncode


def _assert_no_video_failed(jobs: Jobs, job: str) -> None:
    for vid in VIDEOS:
        assert jobs.video(job, vid).get("status") != "failed", jobs.video(job, vid)


@pytest.fixture
def half_copied_model(tiny_model_dir, tmp_path) -> Path:
    """The tiny model with its weights cut in half, as a copy that stopped early: its config and
    files are all there (the parent's check passes), the weights do not load."""
    model = tmp_path / "half-copied"
    shutil.copytree(tiny_model_dir, model)
    (weights,) = model.glob("*.safetensors")
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return model


def test_weights_cut_short_are_the_workers_fault_naming_sam3v_model(half_copied_model):
    """At task time too (a process that loads the model late): not a video's failure."""
    from pipeline.core.errors import ModelUnavailableError
    from workers.jobs.blame import worker_fault
    from workers.model.loading import load_model

    with pytest.raises(ModelUnavailableError) as caught:
        load_model(str(half_copied_model), "cpu")
    reason = worker_fault(caught.value, str(half_copied_model))
    assert reason and reason.startswith(f"SAM3V_MODEL={half_copied_model}: cannot load the model"), reason
    assert worker_fault(ValueError("prompt too long"), "m") is None
    assert "disk is full" in worker_fault(OSError(28, "No space left on device"), "m")


def test_config_only_model_refused_at_start_naming_sam3v_model(env, redis_server, tiny_model_dir, tmp_path):  # noqa: F811
    model = tmp_path / "config-only"
    model.mkdir()
    shutil.copy(tiny_model_dir / "config.json", model / "config.json")
    worker = Worker.start({**env, "SAM3V_MODEL": str(model)}, "gpu", "gpu-config-only", tmp_path)
    assert _exits(worker, 60) == 2, worker.tail()  # the parent's start check: no weight file at all
    assert f"SAM3V_MODEL={model}" in worker.text() and "no weights" in worker.text(), worker.tail()
    assert "ready." not in worker.text(), "Celery never started"


def test_unloadable_weights_take_the_worker_out_of_service_and_fail_no_video(jobs, cpu, half_copied_model, tmp_path):
    env = jobs.env
    job = jobs.submit(VIDEOS)  # queued before the faulty worker starts: it could take every task
    wait_for(lambda: all((jobs.video(job, v).get("chunks_total") or 0) == len(CHUNKS) for v in VIDEOS), 120,
             lambda: str([jobs.video(job, v) for v in VIDEOS]) + cpu.tail(), poll=0.2)
    start_timeout = 60
    bad = Worker.start({**env, "SAM3V_MODEL": str(half_copied_model),
                        "SAM3V_WORKER_START_TIMEOUT": str(start_timeout)}, "gpu", "gpu-half-copied", tmp_path)
    assert _exits(bad, start_timeout + 30) == OUT_OF_SERVICE, bad.tail()
    assert f"SAM3V_MODEL={half_copied_model}" in bad.text(), bad.tail()
    assert "worker out of service" in bad.text()
    (record,) = _records(jobs.redis_url, "gpu-half-copied")
    assert record["out_of_service"].startswith(f"SAM3V_MODEL={half_copied_model}"), record
    assert "Received task" not in bad.text(), "the master consumed nothing"
    _assert_no_video_failed(jobs, job)
    assert all(not jobs.deliveries(job, v) for v in VIDEOS), "no chunk started"

    good = Worker.start(env, "gpu", "gpu-healthy", tmp_path)
    try:
        doc = jobs.wait_finished(job, 300, lambda: good.tail() + cpu.tail())
        assert doc["status"] == "succeeded", doc
        for vid in VIDEOS:
            assert jobs.deliveries(job, vid) == {c.index: 1 for c in CHUNKS}, vid
    finally:
        good.stop()


def test_a_full_disk_mid_chunk_hands_the_task_back_uncounted(jobs, cpu, tmp_path):
    env = jobs.env
    gpu = Worker.start(env, "gpu", "gpu-clean", jobs.workdir)
    try:
        clean = run_clean(jobs, lambda: gpu.tail() + cpu.tail())
    finally:
        gpu.stop()
    mark = tmp_path / "disk-full-injected"
    pythonpath = os.pathsep.join(p for p in (str(INJECT), env.get("PYTHONPATH", "")) if p)
    bad = Worker.start({**env, "PYTHONPATH": pythonpath, "SAM3V_TEST_DISK_FULL_MARK": str(mark)}, "gpu",
                       "gpu-disk-full", tmp_path)
    job = jobs.submit(VIDEOS)
    assert _exits(bad, 240) == OUT_OF_SERVICE, bad.tail()
    assert mark.exists(), "the fault landed"
    chunk_key = mark.read_text()
    assert "/work/chunks/" in chunk_key, "it landed mid-chunk (the chunk's part was encoded)"
    assert "disk is full" in bad.text(), bad.tail()
    (record,) = _records(jobs.redis_url, "gpu-disk-full")
    assert "No space left on device" in record["out_of_service"], record
    _assert_no_video_failed(jobs, job)

    good = Worker.start(env, "gpu", "gpu-after-disk-full", tmp_path)
    try:
        assert_ends_as_the_clean_run(jobs, clean, job, lambda: good.tail() + cpu.tail())
        for vid in VIDEOS:  # the handed-back start was not counted
            assert jobs.deliveries(job, vid) == {c.index: 1 for c in CHUNKS}, vid
    finally:
        good.stop()
