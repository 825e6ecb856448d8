"""A video's finalize under faults, with real parts (redis-server, a moto S3 server, `sam3v worker`
processes, the tiny model; helpers in tests/fault_env.py). The CPU worker of each test loads
tests/inject_finalize, which lands the fault once at its moment (its ``frozen`` file proves it did):

- a cancel while the finalize is making the outputs: nothing is published, the video is cancelled;
- a cancel after the finalize published its outputs: the video is succeeded, never cancelled with outputs;
- the finalizing process killed between recording the success and removing ``work/``: the
  redelivered finalize removes it, and the bucket holds the keys of a clean run.

And a real clip made corrupt in the middle fails at the chunk that meets the damage, naming the
frame, not in finalize, and leaves no ``work/``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.fault_env import FILES, FINISH_TIMEOUT, Jobs, Worker, assert_same_outputs, wait_for
from tests import media
from tests.test_pipeline import BUCKET, FRAMES, cli, clips, env, redis_server, s3  # noqa: F401  (module fixtures)

INJECT = Path(__file__).parent / "inject_finalize"
VIDEO = "dog"


@pytest.fixture(scope="module")
def fenv(env):  # noqa: F811
    # Time limits no chunk reaches on a loaded 2-core machine: a failed chunk is not what these test.
    return {**env, "SAM3V_TASK_TIME_LIMIT": "300", "SAM3V_VISIBILITY_TIMEOUT": "330"}


@pytest.fixture(scope="module")
def jobs(fenv, redis_server, s3, clips, tmp_path_factory) -> Jobs:  # noqa: F811
    return Jobs(fenv, redis_server.url, s3[0], tmp_path_factory.mktemp("finalize-faults"))


@pytest.fixture(scope="module")
def gpu(fenv, jobs):
    worker = Worker.start(fenv, "gpu", "gpu-finalize", jobs.workdir)
    yield worker
    worker.stop()


@pytest.fixture(scope="module")
def clean_job(fenv, jobs, gpu) -> str:
    cpu = Worker.start(fenv, "cpu", "cpu-clean", jobs.workdir)
    try:
        job = jobs.submit([VIDEO])
        doc = jobs.wait_finished(job, FINISH_TIMEOUT, lambda: gpu.tail() + cpu.tail())
        assert doc["status"] == "succeeded", doc
        assert jobs.keys(job) == jobs.expected_keys(job, [VIDEO], FILES)
        return job
    finally:
        cpu.stop()


def faulted_cpu(env, jobs: Jobs, at: str, tmp_path: Path) -> tuple[Worker, Path]:  # noqa: F811
    folder = tmp_path / f"fault-{at}"
    folder.mkdir()
    pythonpath = ":".join(p for p in (str(INJECT), env.get("PYTHONPATH", "")) if p)
    worker = Worker.start({**env, "PYTHONPATH": pythonpath, "SAM3V_TEST_FINALIZE_AT": at,
                           "SAM3V_TEST_FINALIZE_DIR": str(folder)}, "cpu", f"cpu-{at}", tmp_path)
    return worker, folder


def landed(folder: Path, worker: Worker, gpu: Worker) -> int:
    """The pid the fault landed in, once it has."""
    mark = folder / "frozen"
    wait_for(mark.exists, FINISH_TIMEOUT, lambda: "the finalize never reached the fault\n" + gpu.tail() + worker.tail(),
             poll=0.05)
    return int(wait_for(lambda: mark.read_text().strip(), 5, lambda: "empty mark"))


def finalize_ended(worker: Worker) -> str:
    """How the (last) finalize task ended, from the worker's log."""
    def ended() -> str | None:
        found = re.findall(r"Task sam3v\.finalize\[[0-9a-f-]+\] (succeeded|ignored|raised|retry|INTERNAL ERROR)",
                           worker.text())
        return found[-1] if found else None

    return wait_for(ended, FINISH_TIMEOUT, worker.tail)


def cancel(env, job: str) -> None:  # noqa: F811
    done = cli(env, "cancel", job)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_cancel_while_finalize_makes_the_outputs_publishes_nothing(fenv, jobs, gpu, tmp_path):
    cpu, folder = faulted_cpu(fenv, jobs, "join", tmp_path)
    try:
        job = jobs.submit([VIDEO])
        assert landed(folder, cpu, gpu) in cpu.children()
        frozen = jobs.video(job, VIDEO)
        assert frozen["status"] == "processing" and frozen["chunks_done"] == 3, frozen
        assert not any(jobs.exists(f"{job}/{VIDEO}/{f}") for f in FILES), "nothing published yet"
        assert jobs.exists(f"{job}/{VIDEO}/work/"), "the finalize is under way: its chunks are there"

        cancel(fenv, job)
        assert jobs.video(job, VIDEO)["status"] == "cancelled"
        (folder / "release").touch()

        assert finalize_ended(cpu) == "ignored"
        assert "stopped before publishing its outputs" in cpu.text(), cpu.tail()
        doc = jobs.wait_finished(job, 60, cpu.tail)
        assert doc["status"] == "cancelled" and doc["videos"][0]["status"] == "cancelled", doc
        # close_cancelled (queued behind the frozen finalize) writes the index; nothing else stays.
        wait_for(lambda: jobs.keys(job) == {"results.jsonl", "report.html"}, 60, lambda: f"{sorted(jobs.keys(job))}\n{cpu.tail()}")
        assert json.loads(jobs.read(f"{job}/results.jsonl"))["state"] == "cancelled"
    finally:
        cpu.stop()


def test_a_cancel_after_finalize_published_leaves_the_video_succeeded(fenv, jobs, gpu, clean_job, tmp_path):
    cpu, folder = faulted_cpu(fenv, jobs, "publish", tmp_path)
    try:
        job = jobs.submit([VIDEO])
        assert landed(folder, cpu, gpu) in cpu.children()
        frozen = jobs.video(job, VIDEO)
        assert frozen["status"] == "processing", frozen
        assert all(jobs.exists(f"{job}/{VIDEO}/{f}") for f in FILES), "the outputs are published"

        cancel(fenv, job)
        assert jobs.video(job, VIDEO)["status"] == "processing", "a publishing video is not cancelled"
        (folder / "release").touch()

        assert finalize_ended(cpu) == "succeeded"
        doc = jobs.wait_finished(job, 60, cpu.tail)
        assert doc["videos"][0]["status"] == "succeeded" and doc["videos"][0]["outputs"], doc
        wait_for(lambda: jobs.keys(job) == jobs.expected_keys(job, [VIDEO], FILES), 60,
                 lambda: f"{sorted(jobs.keys(job))}\n{cpu.tail()}")
        assert json.loads(jobs.read(f"{job}/results.jsonl"))["state"] == "succeeded"
        assert_same_outputs(jobs, clean_job, job, [VIDEO])
    finally:
        cpu.stop()


def test_finalize_killed_after_recording_success_leaves_no_work(fenv, jobs, gpu, clean_job, tmp_path):
    cpu, folder = faulted_cpu(fenv, jobs, "kill", tmp_path)
    try:
        job = jobs.submit([VIDEO])
        killed = landed(folder, cpu, gpu)  # written after the success was recorded, before the kill
        wait_for(lambda: killed not in cpu.children(), 30, cpu.tail)
        assert jobs.video(job, VIDEO)["status"] == "succeeded"

        # The redelivered finalize (the killed one logged no end) finds the success recorded and removes work/.
        assert finalize_ended(cpu) == "ignored"
        assert cpu.alive(), "the same worker master redelivered it"
        doc = jobs.wait_finished(job, 60, cpu.tail)
        assert doc["status"] == "succeeded", doc
        assert jobs.keys(job) == jobs.expected_keys(job, [VIDEO], FILES), sorted(jobs.keys(job))
        assert "its video already ended (succeeded); its work files removed" in cpu.text()
        assert_same_outputs(jobs, clean_job, job, [VIDEO])
    finally:
        cpu.stop()


def test_a_source_corrupt_in_the_middle_fails_at_its_chunk_and_leaves_no_work(fenv, jobs, gpu, media_dir, tmp_path):
    """Before: every chunk ran, then finalize failed with "internal error ... returned 22" (the chunks
    disagreed on which frame was which past the damage) and left work/."""
    damaged = media.damaged_copy(media.clip(media_dir, FRAMES + 4), tmp_path / "damaged.mp4", 3)
    jobs.s3.upload_file(str(damaged), BUCKET, "inputs/damaged.mp4")
    cpu = Worker.start(fenv, "cpu", "cpu-damaged", tmp_path)
    try:
        job = jobs.submit(["damaged"])
        doc = jobs.wait_finished(job, FINISH_TIMEOUT, lambda: gpu.tail() + cpu.tail())
        (video,) = doc["videos"]
        assert video["status"] == "failed", video
        assert "damaged data at frame 3" in video["error"] and "internal error" not in video["error"], video
        assert not video.get("chunks_done"), "it failed at the chunk that met the damage, the first"
        wait_for(lambda: jobs.keys(job) == {"results.jsonl", "report.html"}, 60, lambda: f"{sorted(jobs.keys(job))}\n{cpu.tail()}")
        assert "sam3v.finalize[" not in cpu.text()
    finally:
        cpu.stop()
