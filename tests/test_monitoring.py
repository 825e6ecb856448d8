"""Schedules (celery-redbeat, two beat processes) and Flower, against real redis/worker processes."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest
import redis

from tests.services import free_port, start_worker, stop_process
from tests.test_pipeline import BUCKET, cli, clips, env, redis_server, s3  # noqa: F401  (fixtures)


def _beat(env, log):
    return subprocess.Popen([sys.executable, "-m", "sam3v.cli", "beat", "--loglevel", "INFO"], env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def _scheduled_jobs(r: redis.Redis) -> list[str]:
    return [j.decode() for j in r.zrange("sam3v:jobs", 0, -1)
            if r.hget(f"sam3v:job:{j.decode()}", "name") == b"every4 (scheduled)"]


def test_schedule_fires_one_job_per_slot_with_two_beats(env, s3, clips, redis_server, tmp_path):
    client, _ = s3
    client.put_object(Bucket=BUCKET, Key="manifests/nightly.jsonl",
                      Body=json.dumps({"video": f"s3://{BUCKET}/inputs/corrupt.mp4"}).encode() + b"\n")
    add = cli(env, "schedule", "add", "every4", "--every", "4", "--manifest", f"s3://{BUCKET}/manifests/nightly.jsonl",
              "--prompt", "dog")
    assert add.returncode == 0, add.stderr
    listed = cli(env, "schedule", "list")
    assert "every4" in listed.stdout
    r = redis.Redis.from_url(redis_server.url)
    worker = start_worker(env, "cpu", "sched", tmp_path / "worker.log")
    beats = [_beat(env, tmp_path / "beat1.log"), _beat(env, tmp_path / "beat2.log")]
    try:
        # Beat start-up (imports, redbeat lock) takes seconds on a loaded machine, so wait for the
        # slots rather than a fixed time; two beats racing on every slot is what is under test.
        deadline = time.monotonic() + 90
        while len(r.keys("sam3v:idem:schedule:every4:*")) < 3 and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        for b in beats:
            stop_process(b)
        assert cli(env, "schedule", "remove", "every4").returncode == 0
        # a firing sent just before the beats stopped may still be in the worker
        deadline = time.monotonic() + 30
        while len(_scheduled_jobs(r)) < len(r.keys("sam3v:idem:schedule:every4:*")) and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2)
        stop_process(worker)
    slots = [k.decode() for k in r.keys("sam3v:idem:schedule:every4:*")]
    jobs = _scheduled_jobs(r)
    assert len(slots) >= 3, "the schedule fired in three slots within 90 s"
    assert len(jobs) == len(slots), (jobs, slots)
    assert "every4" not in cli(env, "schedule", "list").stdout


def test_flower_sees_our_workers_and_tasks(env, redis_server, tmp_path):
    port = free_port()
    flower_env = {**env, "FLOWER_UNAUTHENTICATED_API": "true"}
    flower = subprocess.Popen([sys.executable, "-m", "sam3v.cli", "flower", "--port", str(port)],
                              env=flower_env, stdout=open(tmp_path / "flower.log", "ab"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    worker = start_worker(env, "cpu", "flowerw", tmp_path / "worker.log")
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(120):
            try:
                if httpx.get(f"{base}/healthcheck", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        time.sleep(3)  # the worker joins and Flower subscribes to events
        missing = tmp_path / "missing.jsonl"
        missing.write_text(json.dumps({"video": f"s3://{BUCKET}/inputs/nope.mp4"}) + "\n")
        job = cli(env, "submit", missing, "--prompt", "dog").stdout.strip().splitlines()[-1]
        names, workers = set(), {}
        for _ in range(60):
            tasks = httpx.get(f"{base}/api/tasks", timeout=5).json()
            names = {t.get("name") for t in tasks.values()}
            workers = httpx.get(f"{base}/api/workers", params={"refresh": "1"}, timeout=10).json()
            if "sam3v.probe" in names and any(w.startswith("flowerw@") for w in workers):
                break
            time.sleep(1)
        assert "sam3v.probe" in names, names
        assert any(w.startswith("flowerw@") for w in workers), workers
        assert cli(env, "status", job, "--json").returncode == 0
    finally:
        stop_process(worker)
        stop_process(flower)
