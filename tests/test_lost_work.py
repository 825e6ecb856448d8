"""Fast checks of the pieces that keep work from being lost (in-process Redis: fakeredis, which runs
the status store's Lua, directly or as the embedded context's). The same pieces are exercised
against real processes in tests/test_outages.py."""

from __future__ import annotations

import fakeredis
import pytest
import redis

from pipeline.core.heartbeats import Heartbeats
from pipeline.core.settings import Settings
from pipeline.core.status import StatusStore
from pipeline.core.storage import StorageUnavailable
from tests.test_redeliveries import running_video  # noqa: F401  (the embedded context, a video processing)


@pytest.fixture
def r():
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.fixture
def store(r):
    s = StatusStore(r)
    s.create_job("j", "t", {"lane": "batch"}, [{"id": "v", "video": "s3://b/v.mp4", "prompts": ["dog"]}], [])
    return s


def test_a_write_from_a_stale_read_does_not_undo_a_newer_attempt(store, monkeypatch):
    """A task of attempt 0 read the entry, then a retry reopened the video as attempt 1; the late
    write must not put attempt 0 back (it did: the new attempt's tasks then stopped as strangers)."""
    store.update_video("j", "v", status="processing")
    stale = store.r.hget("sam3v:job:j:videos", "v")
    real_hget = store.r.hget
    calls = {"n": 0}

    def hget_once_stale(key, field):
        if key == "sam3v:job:j:videos" and calls["n"] == 0:
            calls["n"] += 1
            store.reopen("j", ["v"])  # lands between the read and the write
            return stale
        return real_hget(key, field)

    monkeypatch.setattr(store.r, "hget", hget_once_stale)
    store.update_video("j", "v", frames_done=5)
    entry = store.video("j", "v")
    assert entry["attempt"] == 1 and entry["status"] == "queued", entry
    assert entry["frames_done"] == 5  # the write was redone on the fresh entry


def test_a_fenced_write_of_an_earlier_attempt_changes_nothing(store):
    store.reopen("j", ["v"])  # attempt 1
    assert store.update_video("j", "v", fence=0, status="failed", error="late") is False
    assert store.video("j", "v")["status"] == "queued"
    store.update_video("j", "v", fence=1, status="processing")
    assert store.video("j", "v")["status"] == "processing"


def test_silent_videos_are_those_without_a_newer_pending_task(r):
    beats = Heartbeats(r)
    beats.beat("j", "running", now=100)
    beats.beat("j", "waiting", now=100)
    beats.pending("j", "waiting", published=150)  # its next step is in a queue
    beats.beat("j", "restarted", now=200)
    beats.pending("j", "restarted", published=150)  # published, then started (beat at 200), then lost
    beats.beat("j", "fresh", now=990)
    assert sorted(beats.silent_since(cutoff=500)) == [("j", "restarted"), ("j", "running")]
    beats.forget("j", "running")
    assert beats.silent_since(cutoff=500) == [("j", "restarted")]


class _App:
    """Records what the sweeper sends (the real broker path is in tests/test_outages.py)."""

    def __init__(self):
        self.sent = []

    def send_task(self, name, args, kwargs, queue):
        self.sent.append((name, args, kwargs, queue))


def test_the_sweeper_requeues_a_silent_processing_video_once(r, store):
    from workers.jobs.sweeper import sweep_once

    settings = Settings(heartbeat_timeout=60)
    beats = Heartbeats(r)
    store.update_video("j", "v", status="processing")
    beats.beat("j", "v", now=1000)
    app = _App()
    assert sweep_once(app, store, beats, settings, now=1030) == []  # not silent long enough
    assert sweep_once(app, store, beats, settings, now=1100) == [("j", "v")]
    assert app.sent == [("sam3v.probe", ["j", "v"], {"attempt": 1}, "cpu")]
    entry = store.video("j", "v")
    assert (entry["status"], entry["attempt"], entry["requeued"]) == ("queued", 1, 1)
    assert sweep_once(app, store, beats, settings, now=5000) == []  # forgotten until its task beats again
    assert len(app.sent) == 1


def test_the_sweeper_leaves_ended_and_cancelled_videos_alone(r, store):
    from workers.jobs.sweeper import sweep_once

    beats = Heartbeats(r)
    store.mark_cancelled("j")
    beats.beat("j", "v", now=0)
    app = _App()
    assert sweep_once(app, store, beats, Settings(heartbeat_timeout=1), now=100) == []
    assert app.sent == [] and store.video("j", "v")["status"] == "cancelled"
    assert beats.silent_since(cutoff=1e12) == []


def test_an_unreachable_s3_endpoint_is_an_outage_not_an_error_of_the_input(tmp_path):
    import boto3
    import botocore.config

    from pipeline.core.storage import StorageUnavailable
    from pipeline.core.storage.s3 import S3Storage
    from tests.services import free_port

    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{free_port()}", aws_access_key_id="x",
                          aws_secret_access_key="x", region_name="us-east-1",
                          config=botocore.config.Config(retries={"max_attempts": 1}, connect_timeout=1))
    storage = S3Storage("bucket", client=client)
    (tmp_path / "f").write_bytes(b"x")
    for call in (lambda: storage.put_file(tmp_path / "f", "k"), lambda: storage.get_bytes("k"),
                 lambda: storage.exists("k"), lambda: storage.get_file("k", tmp_path / "g")):
        with pytest.raises(StorageUnavailable, match="s3://bucket: storage unreachable"):
            call()


@pytest.mark.parametrize("outage", [
    redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
    StorageUnavailable("s3://bucket: storage unreachable (EndpointConnectionError)"),
], ids=["redis", "storage"])
def test_a_start_an_outage_interrupts_is_not_counted_against_the_redelivery_limit(running_video, outage, monkeypatch):
    """README, Reliability: a chunk that an outage stops runs again later, and that start is not
    counted against SAM3V_MAX_REDELIVERIES. The task body is called directly, as in
    tests/test_redeliveries.py; the outage meets the chunk just after its start was counted. More
    interrupted starts than the limit allows leave the video processing and the count at 0 (counted,
    the last start would fail the video: "started 3 times and never finished")."""
    tasks, ctx = running_video

    def unreachable(*_):
        raise outage

    monkeypatch.setattr(tasks, "_spec", unreachable)  # the chunk's first read once its start is counted
    for _ in range(ctx.settings.max_redeliveries + 1):
        with pytest.raises(type(outage)):  # called directly, Celery's retry raises the outage again
            tasks.segment_chunk_task(job_id="job1", video_id="v", k=2, start=20, stop=30, final=False, num_frames=40)
    assert ctx.status.video("job1", "v")["status"] == "processing"
    assert int(ctx.status.r.hget("sam3v:deliveries:job1:v", "2")) == 0, "every start given back"
