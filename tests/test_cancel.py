"""Cancel stops running work, with real parts: redis-server, a moto S3 server, `sam3v worker`
processes and the tiny model. A chunk cancelled mid-run stops at its next frame: its Celery task
ends ignored (not succeeded), nothing more of it reaches storage (no frames.json, state, done.json
or further parts), its work/ is removed, no outputs are written, and the worker takes the next job."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import redis

from pipeline.core.layout import VideoKeys
from pipeline.core.status import StatusStore
from tests import media
from tests.services import start_worker, stop_process
from tests.test_pipeline import BUCKET, cli, env, redis_server, s3, wait_terminal, write_manifest  # noqa: F401

FRAMES = 60  # one chunk of 60 frames: ~20 s of the tiny model on 720p frames, on one thread
PART = 4  # frames per encoded part: a running chunk publishes a part every few frames
PREFIX = "results"  # SAM3V_STORAGE_URL's prefix in test_pipeline's env


@pytest.fixture(scope="module")
def long_clip(s3, media_dir):  # noqa: F811
    client, _ = s3
    client.upload_file(str(media.clip(media_dir, FRAMES + 4)), BUCKET, "inputs/long.mp4")
    return f"s3://{BUCKET}/inputs/long.mp4"


@pytest.fixture
def cancel_env(env):  # noqa: F811
    # A time limit the uncancelled chunk never reaches, even on a loaded machine: on code that does
    # not stop it, the chunk must run to its end and publish (that is what this test catches).
    return {**env, "SAM3V_PART_FRAMES": str(PART), "SAM3V_TASK_TIME_LIMIT": "600", "SAM3V_VISIBILITY_TIMEOUT": "660"}


@pytest.fixture
def workers(cancel_env, tmp_path):
    logs = {"gpu": tmp_path / "gpu.log", "cpu": tmp_path / "cpu.log"}
    procs = [start_worker(cancel_env, "gpu", "cancel-gpu", logs["gpu"]),
             start_worker(cancel_env, "cpu", "cancel-cpu", logs["cpu"])]
    yield logs
    for p in procs:
        stop_process(p)


def line(video: str, vid: str, frames: int) -> str:
    return json.dumps({"id": vid, "video": video, "prompt": "dog", "max_frames": frames, "chunk_frames": frames})


def submit(env, path: Path) -> str:
    done = cli(env, "submit", path)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def wait_mid_chunk(client, store: StatusStore, job: str, vid: str, timeout: float = 300) -> int:
    """frames_done once the chunk is publishing (a part is in storage) and not finished."""
    end = time.monotonic() + timeout
    entry: dict = {}
    while time.monotonic() < end:
        entry = store.video(job, vid)
        done = entry.get("frames_done") or 0
        assert entry.get("status") in ("queued", "processing") and done < FRAMES, f"the chunk ended first: {entry}"
        if done > 0 and any("/segments/" in k for k in work_objects(client, job, vid)):
            return done
        time.sleep(0.1)
    raise AssertionError(f"chunk of {job}/{vid} never seen mid-run: {entry}")


def wait_log(log: Path, pattern: str, timeout: float = 300) -> re.Match:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        time.sleep(0.1)
    raise AssertionError(f"no {pattern!r} in {log.name} after {timeout} s:\n{log.read_text(errors='replace')[-3000:]}")


def work_objects(client, job: str, vid: str) -> dict[str, tuple]:
    """Every object under the video's work prefix: key -> (ETag, LastModified)."""
    prefix = f"{PREFIX}/{VideoKeys(job, vid).work_prefix}/"
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {o["Key"]: (o["ETag"], o["LastModified"]) for page in pages for o in page.get("Contents", [])}


def test_cancel_stops_a_running_chunk(cancel_env, s3, redis_server, long_clip, workers, tmp_path):  # noqa: F811
    client, _ = s3
    store = StatusStore(redis.Redis.from_url(redis_server.url))
    job = submit(cancel_env, write_manifest(tmp_path / "long.jsonl", [line(long_clip, "long", FRAMES)]))
    chunk_task = wait_log(workers["gpu"], r"Task sam3v\.segment_chunk\[([0-9a-f-]+)\] received").group(1)
    seen = wait_mid_chunk(client, store, job, "long")
    cancelled = cli(cancel_env, "cancel", job)
    assert cancelled.returncode == 0, cancelled.stderr

    # The chunk's task ended without success, having stopped before the chunk's last frame.
    ended = wait_log(workers["gpu"], rf"Task sam3v\.segment_chunk\[{chunk_task}\] (succeeded|ignored|raised|retry|"
                                     r"rejected|INTERNAL ERROR)")
    assert ended.group(1) == "ignored", f"the cancelled chunk's task ended {ended.group(1)!r}, not ignored"
    stopped = wait_log(workers["gpu"], rf"chunk 0 of {job}/long: stopped at frame (\d+)", timeout=5)
    assert seen <= int(stopped.group(1)) < FRAMES, (seen, stopped.group(0))
    after_stop = work_objects(client, job, "long")
    keys = VideoKeys(job, "long")
    assert f"{PREFIX}/{keys.work.done(0)}" not in after_stop and f"{PREFIX}/{keys.work.frames(0)}" not in after_stop
    assert not any("/state/" in k for k in after_stop), sorted(after_stop)
    parts = [k for k in after_stop if "/segments/" in k]
    assert len(parts) < FRAMES // PART, f"a stopped chunk encodes fewer parts than the whole chunk: {parts}"

    # The worker is free: a job sent after the cancel runs to its end.
    other = submit(cancel_env, write_manifest(tmp_path / "short.jsonl", [line(long_clip, "short", 3)]))
    doc = wait_terminal(cancel_env, other, timeout=300)
    assert doc["status"] == "succeeded", doc

    # The cancelled video's work/ is gone (the stopped chunk and sam3v.close_cancelled remove it),
    # nothing of the chunk came back after, and its video has no outputs.
    assert work_objects(client, job, "long") == {}
    for name in ("masks", "overlay"):
        key = f"{PREFIX}/{keys.output(name)}"
        assert "Contents" not in client.list_objects_v2(Bucket=BUCKET, Prefix=key), key
    entry = store.video(job, "long")
    assert entry["status"] == "cancelled" and (entry.get("frames_done") or 0) < FRAMES, entry
    assert not entry.get("chunks_done"), entry
    assert wait_terminal(cancel_env, job, timeout=30)["status"] == "cancelled"
    finalizes = re.findall(r"Task sam3v\.finalize\[[0-9a-f-]+\] received", workers["cpu"].read_text(errors="replace"))
    assert len(finalizes) == 1, f"only the second job's video was finalized: {finalizes}"
