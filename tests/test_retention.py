"""Retention of jobs' Redis records: `sam3v jobs prune` against a real redis-server (jobs made by
`sam3v submit`, their videos ended through the status store as workers end them), and fast checks
of durations, the setting and the expiry/persist pair (fakeredis). The TTL a worker sets when a job
ends is proven with real workers in tests/test_job_states.py."""

from __future__ import annotations

import json
import os
import time

import fakeredis
import pytest
import redis

from pipeline.core import retention
from pipeline.core.settings import Settings
from pipeline.core.status import StatusStore
from tests.test_pipeline import cli, redis_server, write_manifest  # noqa: F401

DAY = 86400


@pytest.fixture
def env(redis_server, tmp_path):  # noqa: F811
    return {**os.environ, "SAM3V_BROKER_URL": redis_server.url, "SAM3V_STORAGE_URL": str(tmp_path / "data"),
            "PYTHONUNBUFFERED": "1"}


def submit(env, path, *args) -> str:
    done = cli(env, "submit", path, *args)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def keys_of(r, job: str) -> list[str]:
    return sorted(k.decode() for k in r.scan_iter(match=f"sam3v:*{job}*"))


def age(r, job: str, created_days: float, ended_days: float | None) -> None:
    """Move a job back in time: its creation (the index's score) and, if ended, its end."""
    r.zadd("sam3v:jobs", {job: time.time() - created_days * DAY})
    if ended_days is not None:
        r.hset(f"sam3v:job:{job}", "completed", time.time() - ended_days * DAY)


def test_prune_removes_old_ended_jobs_and_keeps_running_and_recent_ones(env, redis_server, tmp_path):  # noqa: F811
    r = redis.Redis.from_url(redis_server.url)
    r.flushdb()
    store = StatusStore(r)
    line = json.dumps({"id": "v", "video": "s3://bucket/in/v.mp4", "prompt": "dog"})
    manifest = write_manifest(tmp_path / "m.jsonl", [line])
    old = submit(env, manifest, "--idempotency-key", "nightly-1")
    recent = submit(env, manifest)
    running = submit(env, manifest)
    store.update_video(old, "v", status="failed", error="not a video")  # as a worker ends it
    store.update_video(recent, "v", status="succeeded", outputs={})
    store.update_video(running, "v", status="processing")
    age(r, old, created_days=41, ended_days=40)
    age(r, recent, created_days=41, ended_days=1)
    age(r, running, created_days=50, ended_days=None)
    assert store.summary(old).status == "failed" and store.summary(running).status == "running"
    assert "sam3v:idem:nightly-1" in keys_of(r, "nightly-1") and len(keys_of(r, old)) >= 4

    listed = cli(env, "jobs", "prune", "--older-than", "30d", "--dry-run")
    assert listed.returncode == 0, listed.stderr
    assert [x.split("\t")[0] for x in listed.stdout.splitlines()] == [old] and "would remove 1" in listed.stderr
    assert store.job_exists(old)

    done = cli(env, "jobs", "prune", "--older-than", "30d")
    assert done.returncode == 0, done.stderr
    assert [x.split("\t")[:2] for x in done.stdout.splitlines()] == [[old, "failed"]], done.stdout
    assert "removed 1 job(s)" in done.stderr and "results stay in storage" in done.stderr
    assert keys_of(r, old) == [] and not r.exists("sam3v:idem:nightly-1")
    assert r.zscore("sam3v:jobs", old) is None
    for kept in (recent, running):
        assert store.job_exists(kept) and r.zscore("sam3v:jobs", kept) is not None
        assert store.video(kept, "v")["status"] in ("succeeded", "processing")
    # The same key submits a new job now that the old one is gone.
    assert submit(env, manifest, "--idempotency-key", "nightly-1") != old

    bad = cli(env, "jobs", "prune", "--older-than", "a month")
    assert bad.returncode == 2 and "--older-than" in bad.stderr, bad.stderr


def test_the_listing_still_works_as_a_group_with_prune(env, redis_server, tmp_path):  # noqa: F811
    line = json.dumps({"id": "v", "video": "s3://bucket/in/v.mp4", "prompt": "dog"})
    job = submit(env, write_manifest(tmp_path / "m.jsonl", [line]))
    listed = cli(env, "jobs", "--limit", "50")
    assert listed.returncode == 0 and job[:8] in listed.stdout, listed.stdout + listed.stderr


# --- fast checks (fakeredis) -------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * DAY), ("12h", 43200), ("90m", 5400), ("45s", 45),
                                               ("2w", 14 * DAY), ("3600", 3600), ("1.5h", 5400), (0, 0)])
def test_durations(text, seconds):
    assert retention.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30 days", "-1d", "d", "1y"])
def test_bad_durations_say_how_to_write_one(text):
    with pytest.raises(ValueError, match="duration"):
        retention.parse_duration(text)


def test_the_setting_defaults_to_30_days_and_reads_units(monkeypatch):
    monkeypatch.delenv("SAM3V_JOB_RETENTION", raising=False)
    assert Settings().job_retention == 30 * DAY
    monkeypatch.setenv("SAM3V_JOB_RETENTION", "12h")
    assert Settings().job_retention == 43200
    monkeypatch.setenv("SAM3V_JOB_RETENTION", "soon")
    with pytest.raises(ValueError, match="SAM3V_JOB_RETENTION|job_retention"):
        Settings()


def test_expiry_is_set_at_the_end_and_lifted_by_a_retry():
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    store = StatusStore(r)
    store.claim_idempotency("k", "j", "digest")
    store.create_job("j", "t", {}, [{"id": "v", "video": "s3://b/v.mp4"}], [{"line": 2, "reason": "bad"}])
    store.count_delivery("j", "v", 0)
    retention.expire_job(r, "j", 3 * DAY)
    for key in ("sam3v:job:j", "sam3v:job:j:videos", "sam3v:job:j:items", "sam3v:job:j:counts",
                "sam3v:job:j:rejected", "sam3v:idem:k", "sam3v:deliveries:j:v"):
        assert 0 < r.ttl(key) <= 3 * DAY, key
    retention.keep_job(r, "j")
    assert r.ttl("sam3v:job:j") == -1 and r.ttl("sam3v:idem:k") == -1
    retention.expire_job(r, "j", 0)  # 0: kept until pruned
    assert r.ttl("sam3v:job:j") == -1


def test_index_entries_of_expired_jobs_are_dropped():
    r = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    store = StatusStore(r)
    for job in ("gone", "kept"):
        store.create_job(job, "t", {}, [{"id": "v", "video": "s3://b/v.mp4"}], [])
        r.zadd("sam3v:jobs", {job: time.time() - 40 * DAY})
    r.delete(*[k for k in r.scan_iter(match="sam3v:job:gone*")])  # what the TTL did
    assert retention.forget_expired(r, time.time() - 30 * DAY) == 1
    assert [j.id for j in store.jobs(10)] == ["kept"] and r.zscore("sam3v:jobs", "gone") is None


def test_generation_keys_agree_with_the_api():
    from sam3v.api.service import gen_key, owner_key

    assert retention.generation_key("20250101-000000-0123abcd") == gen_key("20250101-000000-0123abcd")
    assert retention.generation_owner_key("abc") == owner_key("abc")
