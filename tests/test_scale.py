"""Jobs of any size (issue 13), with a real redis-server: submit streams the manifest (the producer
holds one batch, whatever the manifest's size), every bad line is reported with its number, status
reads counters kept as the job runs (they agree with a scan of every video), and cancel removes the
job's queued messages in bounded batches; with real workers and the tiny model, no chunk starts
after a cancel. How fast: benchmarks/bench_pipeline.py."""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path

import pytest
import redis

from pipeline.control.manifest import Rejected, read_manifest, scan_manifest
from pipeline.control.producer import JobWriter, publisher
from pipeline.control.purge import purge_job
from pipeline.core.celery_app import make_app
from pipeline.core.settings import Settings
from pipeline.core.status import TERMINAL, StatusStore
from tests.services import start_worker, stop_process
from tests.test_pipeline import BUCKET, cli, env, redis_server, s3, write_manifest  # noqa: F401


@pytest.fixture
def store(redis_server):  # noqa: F811
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    return StatusStore(client)


@pytest.fixture
def celery(redis_server):  # noqa: F811
    return make_app(Settings(broker_url=redis_server.url))


def lines(n: int, bad: dict[int, str] | None = None) -> list[str]:
    out = [json.dumps({"id": f"v{i:05d}", "video": f"s3://{BUCKET}/in/{i}.mp4"}) for i in range(1, n + 1)]
    for number, text in (bad or {}).items():
        out[number - 1] = text
    return out


def test_the_producer_holds_one_batch_and_sends_it_before_reading_on(store, celery, tmp_path):
    path = write_manifest(tmp_path / "m.jsonl", lines(2500))
    scan = scan_manifest(path, "m.jsonl", "dog")
    read = [0]
    at_send: list[tuple[int, int, int]] = []  # (entries read, ids sent, messages in the queue after)

    def counted(entries):
        for entry in entries:
            read[0] += 1
            yield entry

    writer = JobWriter(store, "20990101-000000-0000abcd", "m", {"lane": "batch"}, batch=1000)
    with read_manifest(path, "m.jsonl", scan, "dog") as entries, publisher(celery, 1000) as send:
        def sent(ids):
            send(writer.job_id, ids, "batch")
            at_send.append((read[0], len(ids), store.r.llen("cpu")))
        tally = writer.record(counted(entries), sent)
    # The first batch went out (published, in Redis) when 1,000 lines had been read of 2,500; the
    # newest recorded video waits for the next batch (the last batch must have one to send).
    assert at_send[0] == (1000, 999, 999), at_send
    assert [a[1] for a in at_send] == [999, 1000, 501] and at_send[-1][2] == 2500 == tally.accepted
    assert store.summary(writer.job_id).total == 2500
    assert store.video_ids(writer.job_id, 0, 3) == ["v00001", "v00002", "v00003"]


def test_bad_lines_in_the_middle_are_reported_with_their_numbers(env, store, tmp_path):  # noqa: F811
    bad = {7: "not json", 1000: json.dumps({"video": "ftp://x/y.mp4"}),
           1001: json.dumps({"id": "v00002", "video": f"s3://{BUCKET}/again.mp4"}),  # repeats line 2, next batch
           1999: json.dumps({"video": f"s3://{BUCKET}/a.mp4", "colour": "red"}), 2500: "[1]"}
    path = write_manifest(tmp_path / "m.jsonl", lines(2500, bad))
    done = cli(env, "submit", path, "--prompt", "dog", "--check-inputs", "none")
    assert done.returncode == 0, done.stderr
    assert "2495 video(s), 5 rejected line(s)" in done.stderr
    job = done.stdout.strip().splitlines()[-1]
    full = json.loads(cli(env, "status", job, "--json", "--videos", "all").stdout)
    reasons = [(r["line"], r["reason"]) for r in full["rejected"]]
    assert [line for line, _ in reasons] == [7, 1000, 1001, 1999, 2500], reasons
    for (_, reason), words in zip(reasons, ["JSON", "'ftp'", "'v00002' repeats line 2", "'colour'", "not a JSON object"]):
        assert words in reason, reasons
    assert full["total"] == len(full["videos"]) == 2495 == store.r.llen("cpu")
    page = json.loads(cli(env, "status", job, "--json", "--page", "2", "--limit", "10").stdout)
    assert [v["line"] for v in page["videos"]] == list(range(12, 22))  # line 7 was rejected
    assert page["rejected_total"] == 5 and page["rejected"] == [] and page["counts"]["queued"] == 2495

    # --strict: refused, naming the lines, and nothing recorded or queued.
    store.r.delete("cpu")
    refused = cli(env, "submit", path, "--prompt", "dog", "--strict", "--check-inputs", "none")
    assert refused.returncode != 0 and "5 bad line(s)" in refused.stderr and "line 7:" in refused.stderr
    assert store.r.llen("cpu") == 0 and store.r.zcard("sam3v:jobs") == 1
    assert not [k for k in store.r.scan_iter("sam3v:job:*") if job.encode() not in k]


class _Revoked:
    """task-revoked events seen on the broker (as Flower sees them), from a receiver thread."""

    def __init__(self, app):
        self.ids: set[str] = set()
        self.reasons: set[str] = set()
        self._conn = app.connection()
        self._receiver = app.events.Receiver(self._conn, handlers={"task-revoked": self._seen})
        self._thread = threading.Thread(target=lambda: self._receiver.capture(limit=None, timeout=None, wakeup=False),
                                        daemon=True)
        self._thread.start()

    def _seen(self, event: dict) -> None:
        self.ids.add(event["uuid"])
        self.reasons.add(event.get("reason"))

    def stop(self) -> None:
        self._receiver.should_stop = True
        self._thread.join(10)
        self._conn.release()


def listen_for_revoked(app) -> _Revoked:
    """A receiver subscribed before returning: its own probe event has come back."""
    from pipeline.control.purge import announce_revoked

    seen = _Revoked(app)
    deadline = time.monotonic() + 30
    while "subscribed?" not in seen.ids:
        assert time.monotonic() < deadline, "the event receiver never subscribed"
        announce_revoked(app, ["subscribed?"])
        time.sleep(0.2)
    seen.ids.clear()
    seen.reasons.clear()
    return seen


def test_cancel_removes_queued_messages_in_batches(env, store, celery, tmp_path):  # noqa: F811
    first = cli(env, "submit", write_manifest(tmp_path / "a.jsonl", lines(10)), "--prompt", "dog",
                "--check-inputs", "none").stdout.split()[-1]
    big = cli(env, "submit", write_manifest(tmp_path / "b.jsonl", lines(2500)), "--prompt", "dog",
              "--check-inputs", "none").stdout.split()[-1]
    last = cli(env, "submit", write_manifest(tmp_path / "c.jsonl", lines(10)), "--prompt", "dog",
               "--check-inputs", "none").stdout.split()[-1]
    others = [m for m in store.r.lrange("cpu", 0, -1) if big.encode() not in m]
    queued_big = [m for m in store.r.lrange("cpu", 0, -1) if big.encode() in m]
    assert store.r.llen("cpu") == 2520 and len(others) == 20
    assert store.mark_cancelled(big) == 2500
    announced = listen_for_revoked(celery)
    purged = purge_job(celery, store, big, batch=100)
    deadline = time.monotonic() + 60
    while len(announced.ids) < 2500 and time.monotonic() < deadline:
        time.sleep(0.1)
    announced.stop()
    assert purged.messages == 2500 and purged.calls >= 25, purged
    # Flower saw each of them sent: each is announced revoked, or it would show pending forever.
    assert announced.ids == {m["headers"]["id"] for m in map(json.loads, queued_big)} and announced.reasons == {"cancelled"}
    assert store.r.lrange("cpu", 0, -1) == others, "other jobs' messages keep their places"
    doc = store.status_document(big)
    assert doc["status"] == "cancelled" and {v["status"] for v in doc["videos"]} == {"cancelled"}
    assert store.summary(big).counts["cancelled"] == 2500
    # Through the CLI: the job's messages go, the others stay.
    assert cli(env, "cancel", last).returncode == 0
    assert [m for m in store.r.lrange("cpu", 0, -1) if b"sam3v.probe" in m] == \
        [m for m in others if first.encode() in m]


def scanned(doc: dict) -> dict:
    """What the counters must say, from every video's own entry."""
    counts = {s: 0 for s in ("queued", "processing", *TERMINAL)}
    for v in doc["videos"]:
        counts[v["status"]] += 1
    return {"counts": counts, "frames_done": sum(v.get("frames_done") or 0 for v in doc["videos"]),
            "frames_total": sum(v.get("frames_total") or 0 for v in doc["videos"])}


def chunk_starts(store: StatusStore, job: str) -> dict[str, dict]:
    return {k.decode(): {f.decode(): int(v) for f, v in store.r.hgetall(k).items()}
            for k in store.r.scan_iter(f"sam3v:deliveries:{job}:*")}


def wait_idle(log: Path, store: StatusStore, timeout: float = 180) -> None:
    """Every segment_chunk task the GPU worker received has ended, and nothing is queued or reserved."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        text = log.read_text(errors="replace")
        received = set(re.findall(r"Task sam3v\.segment_chunk\[([0-9a-f-]+)\] received", text))
        ended = set(re.findall(r"Task sam3v\.segment_chunk\[([0-9a-f-]+)\] (?:succeeded|ignored|raised|failed|retry|"
                               r"rejected|INTERNAL)", text))
        if received <= ended and not store.r.hlen("unacked") and not store.r.llen("gpu") and not store.r.llen("cpu"):
            return
        time.sleep(0.5)
    raise AssertionError(f"the workers did not go idle: {log.read_text(errors='replace')[-3000:]}")


def test_counters_agree_with_a_scan_and_no_chunk_starts_after_cancel(env, s3, store, tiny_model_dir, media_dir,  # noqa: F811
                                                                     tmp_path):
    from tests import media

    client, _ = s3
    client.upload_file(str(media.clip(media_dir, 24)), BUCKET, "inputs/dog24.mp4")
    client.upload_file(str(media.random_bytes(media_dir)), BUCKET, "inputs/corrupt.mp4")
    dog = f"s3://{BUCKET}/inputs/dog24.mp4"
    entries = [{"id": "ok", "video": dog, "max_frames": 4, "chunk_frames": 8},
               {"id": "bad", "video": f"s3://{BUCKET}/inputs/corrupt.mp4"}]
    entries += [{"id": f"long{i}", "video": dog, "max_frames": 20, "chunk_frames": 20} for i in range(4)]
    path = write_manifest(tmp_path / "m.jsonl", [json.dumps({**e, "prompt": "dog"}) for e in entries])
    logs = {"gpu": tmp_path / "gpu.log", "cpu": tmp_path / "cpu.log"}
    wenv = {**env, "SAM3V_TASK_TIME_LIMIT": "600", "SAM3V_VISIBILITY_TIMEOUT": "660"}
    procs = [start_worker(wenv, "gpu", "scale-gpu", logs["gpu"]), start_worker(wenv, "cpu", "scale-cpu", logs["cpu"])]
    try:
        done = cli(env, "submit", path, "--check-inputs", "none")
        assert done.returncode == 0, done.stderr
        job = done.stdout.split()[-1]
        end = time.monotonic() + 600
        while time.monotonic() < end:  # ok and bad ended, a long chunk is running
            states = {v["id"]: v for v in store.status_document(job)["videos"]}
            if states["ok"]["status"] == "succeeded" and states["bad"]["status"] == "failed" and any(
                    v["status"] == "processing" and (v.get("frames_done") or 0) > 0 for v in states.values()):
                break
            assert states["ok"]["status"] != "failed", states["ok"]
            time.sleep(0.2)
        else:
            raise AssertionError(f"never saw ok succeeded, bad failed and a long chunk running: {states}")
        cancelled = cli(env, "cancel", job)
        assert cancelled.returncode == 0, cancelled.stderr
        started = chunk_starts(store, job)
        assert store.r.llen("gpu") == 0 and store.r.llen("cpu") <= 1  # at most sam3v.close_cancelled
        wait_idle(logs["gpu"], store)
        assert chunk_starts(store, job) == started, "a chunk started after the cancel"
    finally:
        for p in procs:
            stop_process(p)
    full = store.status_document(job)
    page = store.status_document(job, 0, 2)
    states = {v["id"]: v["status"] for v in full["videos"]}
    assert states["ok"] == "succeeded" and states["bad"] == "failed" and "cancelled" in states.values(), states
    assert {k: page[k] for k in ("counts", "frames_done", "frames_total")} == scanned(full)
    assert page["frames_done"] > 0 and page["status"] == full["status"] == "cancelled"
    assert [v["id"] for v in page["videos"]] == ["ok", "bad"]


def test_a_page_of_no_videos_reads_only_the_counters(store, celery):
    """``watch`` polls with limit 0: no video and no rejected line is read (LRANGE 0 -1 would be all)."""
    data = "\n".join(["oops"] + lines(30)).encode()
    from pipeline.control.producer import submit_manifest

    job = submit_manifest(celery, store, data, "m.jsonl", default_prompt="dog").job_id
    doc = store.status_document(job, 0, 0)
    assert doc["videos"] == [] and doc["rejected"] == [] and doc["rejected_total"] == 1
    assert doc["total"] == 30 and doc["counts"]["queued"] == 30
