"""Job and video states an operator can trust, with real parts: redis-server, a moto S3 server, two
`sam3v worker` processes (gpu, cpu) sending Celery task events, a Celery event receiver (what Flower
is fed by) and the tiny model.

- `sam3v cancel` on an ended job, and `sam3v retry` with nothing to run again, change nothing and
  exit 1; `retry --video` reruns only that video, `--cancelled` lets it rerun a cancelled one, and
  the job then reads true (partial: 1 succeeded, 1 cancelled), not "failed with 0 failed".
- Every task of a failed or cancelled video ends in a terminal Celery state (FAILURE or REVOKED),
  none stays STARTED, and the worker's failed count matches the failed videos.
- A cancelled job gets its results.jsonl and keeps no work/ in the bucket; the chunk that was
  running logs that it was cancelled and never 'succeeded'.
- An ended job's Redis records carry SAM3V_JOB_RETENTION as their TTL.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import redis
from celery import Celery
from celery.events.state import State

from pipeline.core.status import StatusStore
from tests.services import start_worker, stop_process
from tests.test_cancel import FRAMES as LONG_FRAMES, long_clip, wait_mid_chunk  # noqa: F401
from tests.test_pipeline import BUCKET, clips, cli, env, redis_server, s3, write_manifest  # noqa: F401

PREFIX = "results"  # SAM3V_STORAGE_URL's prefix in test_pipeline's env
RETENTION = 2 * 86400
READY = ("SUCCESS", "FAILURE", "REVOKED")


class TaskEvents:
    """A Celery event receiver in a thread: the same events Flower builds its task list from."""

    def __init__(self, broker_url: str):
        self.app = Celery(broker=broker_url)
        self.state = State()
        self.failed_by_host: Counter = Counter()
        self.lock = threading.Lock()
        self.receiver = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with self.app.connection() as conn:
            self.receiver = self.app.events.Receiver(conn, handlers={"*": self._on})
            self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def _on(self, event: dict) -> None:
        with self.lock:
            self.state.event(event)
            if event["type"] == "task-failed":
                self.failed_by_host[event["hostname"].split("@")[0]] += 1

    def tasks(self, job: str, video: str | None = None) -> list:
        """Tasks whose arguments name this job (and video)."""
        with self.lock:
            return [t for t in self.state.tasks.values()
                    if t.args and job in t.args and (video is None or f"'{video}'" in t.args)]

    def workers_online(self) -> set[str]:
        with self.lock:
            return {w.hostname.split("@")[0] for w in self.state.workers.values() if w.alive}

    def wait_all_ended(self, job: str, expect: int, timeout: float = 120) -> list:
        """The job's tasks once at least ``expect`` were received and every one is terminal."""
        end = time.monotonic() + timeout
        tasks = []
        while time.monotonic() < end:
            tasks = self.tasks(job)
            if len(tasks) >= expect and all(t.state in READY for t in tasks):
                return tasks
            time.sleep(0.2)
        raise AssertionError(f"tasks of {job} not all terminal: {[(t.name, t.args, t.state) for t in tasks]}")

    def stop(self) -> None:
        if self.receiver is not None:
            self.receiver.should_stop = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def states_env(env):  # noqa: F811
    return {**env, "SAM3V_JOB_RETENTION": "2d", "SAM3V_PART_FRAMES": "4",
            "SAM3V_TASK_TIME_LIMIT": "600", "SAM3V_VISIBILITY_TIMEOUT": "660"}


@pytest.fixture(scope="module")
def events(redis_server):  # noqa: F811
    recorder = TaskEvents(redis_server.url)
    yield recorder
    recorder.stop()


@pytest.fixture(scope="module")
def workers(states_env, events, tmp_path_factory):
    logs = tmp_path_factory.mktemp("states-logs")
    procs = {"gpu": start_worker(states_env, "gpu", "states-gpu", logs / "gpu.log"),
             "cpu": start_worker(states_env, "cpu", "states-cpu", logs / "cpu.log")}
    # Both online in the receiver: it is consuming before any job's first event.
    end = time.monotonic() + 180
    while events.workers_online() != {"states-gpu", "states-cpu"} and time.monotonic() < end:
        time.sleep(0.2)
    assert events.workers_online() == {"states-gpu", "states-cpu"}, "workers never sent worker-online events"
    yield {name: logs / f"{name}.log" for name in procs}
    for p in procs.values():
        stop_process(p)


@pytest.fixture(scope="module")
def store(redis_server):  # noqa: F811
    return StatusStore(redis.Redis.from_url(redis_server.url))


def line(video: str, vid: str, frames: int) -> str:
    return json.dumps({"id": vid, "video": video, "prompt": "dog", "max_frames": frames, "chunk_frames": frames})


def submit(env, path: Path, *args: str) -> str:
    done = cli(env, "submit", path, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def wait_ended(store: StatusStore, job: str, timeout: float = 300) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        doc = store.status_document(job)
        if doc["status"] in ("succeeded", "partial", "failed", "cancelled"):
            return doc
        time.sleep(0.3)
    raise AssertionError(f"job {job} did not end: {store.status_document(job)}")


def objects(client, prefix: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def wait_results(client, job: str, want: list[tuple[str, str]], timeout: float = 60) -> None:
    """Until the job's results.jsonl holds these (id, state) pairs."""
    end = time.monotonic() + timeout
    got = None
    while time.monotonic() < end:
        if objects(client, f"{PREFIX}/{job}/results.jsonl"):
            body = client.get_object(Bucket=BUCKET, Key=f"{PREFIX}/{job}/results.jsonl")["Body"].read()
            got = sorted((r["id"], r["state"]) for r in map(json.loads, body.splitlines()))
            if got == sorted(want):
                return
        time.sleep(0.3)
    raise AssertionError(f"results.jsonl of job {job}: {got}, not {sorted(want)}")


def record_keys(job: str) -> list[str]:
    return [f"sam3v:job:{job}", f"sam3v:job:{job}:items", f"sam3v:job:{job}:videos", f"sam3v:job:{job}:counts"]


@pytest.fixture(scope="module")
def partial_job(states_env, s3, clips, workers, store, tmp_path_factory):  # noqa: F811
    """An ended job: one video succeeded, one (not a video) failed at its probe."""
    manifest = write_manifest(tmp_path_factory.mktemp("m") / "partial.jsonl", [
        line(f"s3://{BUCKET}/inputs/dog.mp4", "good", 4), line(f"s3://{BUCKET}/inputs/corrupt.mp4", "bad", 4)])
    job = submit(states_env, manifest)
    doc = wait_ended(store, job)
    assert doc["status"] == "partial" and doc["counts"]["succeeded"] == 1 and doc["counts"]["failed"] == 1, doc
    return job


def test_cancel_on_an_ended_job_changes_nothing_and_exits_1(states_env, partial_job, store):
    before = store.status_document(partial_job)
    done = cli(states_env, "cancel", partial_job)
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "already ended (partial)" in done.stderr and "nothing changed" in done.stderr, done.stderr
    assert store.status_document(partial_job) == before
    assert not store.is_cancelled(partial_job)


def test_retry_of_a_video_that_did_not_fail_changes_nothing_and_exits_1(states_env, partial_job, store):
    before = store.status_document(partial_job)
    done = cli(states_env, "retry", partial_job, "--video", "good")
    assert done.returncode == 1, (done.returncode, done.stderr)
    assert "video good is succeeded" in done.stderr and "nothing changed" in done.stderr, done.stderr
    assert store.status_document(partial_job) == before
    unknown = cli(states_env, "retry", partial_job, "--video", "nosuch")
    assert unknown.returncode == 2 and "no video 'nosuch'" in unknown.stderr, unknown.stderr


def test_every_task_of_a_failed_video_ends_failed_in_celery_events(partial_job, events):
    tasks = events.wait_all_ended(partial_job, expect=4)  # 2 probes, 1 chunk, 1 finalize
    bad = events.tasks(partial_job, "bad")
    assert [(t.name, t.state) for t in bad] == [("sam3v.probe", "FAILURE")], [(t.name, t.state) for t in bad]
    assert "not a video" in bad[0].exception, bad[0].exception
    good = events.tasks(partial_job, "good")
    assert sorted((t.name, t.state) for t in good) == [
        ("sam3v.finalize", "SUCCESS"), ("sam3v.probe", "SUCCESS"), ("sam3v.segment_chunk", "SUCCESS")], good
    assert len(tasks) == 4
    # Flower's worker row counts task-failed events: one failed video, one failed task.
    assert events.failed_by_host["states-cpu"] == 1 and events.failed_by_host["states-gpu"] == 0, events.failed_by_host


def test_an_ended_jobs_records_expire_after_the_retention(partial_job, store):
    for key in record_keys(partial_job):
        ttl = store.r.ttl(key)
        assert 0 < ttl <= RETENTION, (key, ttl)


def test_a_cancelled_job_is_closed_and_only_the_named_video_runs_again(states_env, s3, long_clip, clips, workers,  # noqa: F811
                                                                      events, store, tmp_path):
    client, _ = s3
    manifest = write_manifest(tmp_path / "c.jsonl", [line(long_clip, "long", LONG_FRAMES),
                                                     line(f"s3://{BUCKET}/inputs/dog.mp4", "short", 4)])
    job = submit(states_env, manifest)
    wait_mid_chunk(client, store, job, "long")
    assert any("/work/" in k for k in objects(client, f"{PREFIX}/{job}/long/"))
    done = cli(states_env, "cancel", job)
    assert done.returncode == 0, done.stderr
    assert "2 video(s) stopped" in done.stderr, done.stderr

    # Every task of the job ends terminal: the running chunk and the queued one REVOKED, none STARTED.
    tasks = events.wait_all_ended(job, expect=4)  # 2 probes, the running chunk, the queued chunk
    chunks = {re.search(r"'(long|short)'", t.args).group(1): t for t in tasks if t.name == "sam3v.segment_chunk"}
    assert {v: t.state for v, t in chunks.items()} == {"long": "REVOKED", "short": "REVOKED"}, chunks
    assert all(getattr(t, "reason", None) == "cancelled" for t in chunks.values()), [vars(t) for t in chunks.values()]
    gpu_log = workers["gpu"].read_text(errors="replace")
    assert f"sam3v.segment_chunk of {job}/long: cancelled" in gpu_log
    assert f"Task sam3v.segment_chunk[{chunks['long'].uuid}] succeeded" not in gpu_log

    # Closed like an ended job: results.jsonl with every video's outcome, no work/, records expire.
    wait_results(client, job, [("long", "cancelled"), ("short", "cancelled")])
    assert [k for k in objects(client, f"{PREFIX}/{job}/") if "/work/" in k] == []
    assert 0 < store.r.ttl(f"sam3v:job:{job}:videos") <= RETENTION
    doc = store.status_document(job)
    assert doc["status"] == "cancelled" and doc["counts"]["cancelled"] == 2

    # Nothing failed: a plain retry has nothing to run, says how to rerun cancelled videos, changes nothing.
    nothing = cli(states_env, "retry", job)
    assert nothing.returncode == 1 and "--cancelled" in nothing.stderr, (nothing.returncode, nothing.stderr)
    assert store.status_document(job) == doc
    refused = cli(states_env, "retry", job, "--video", "short")
    assert refused.returncode == 1 and "add --cancelled" in refused.stderr, refused.stderr

    # Only the named cancelled video runs again; the job then reads what its videos are.
    again = cli(states_env, "retry", job, "--cancelled", "--video", "short")
    assert again.returncode == 0, again.stderr
    assert store.r.ttl(f"sam3v:job:{job}:videos") == -1  # running again: no expiry under it
    doc = wait_ended(store, job)
    by_id = {v["id"]: v for v in doc["videos"]}
    assert by_id["short"]["status"] == "succeeded" and by_id["short"]["attempt"] == 1, by_id["short"]
    assert by_id["long"]["status"] == "cancelled" and not by_id["long"].get("attempt"), by_id["long"]
    assert doc["status"] == "partial", doc["status"]
    assert (doc["counts"]["succeeded"], doc["counts"]["failed"], doc["counts"]["cancelled"]) == (1, 0, 1)
    probes_of_long = [t for t in events.tasks(job, "long") if t.name == "sam3v.probe"]
    assert len(probes_of_long) == 1, "the video that was not named ran again"
    wait_results(client, job, [("long", "cancelled"), ("short", "succeeded")])
