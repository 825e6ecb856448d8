"""What the CLI refuses where it enters, with a real redis-server and `sam3v` processes: an
``--on-done`` URL the worker would refuse to send to, and job ids shaped like a job's own Redis keys
(``<job>:videos``) for status, cancel, retry and watch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import redis

from pipeline.core.status import StatusStore
from tests.services import RedisServer


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def env(redis_url, tmp_path_factory):
    return {**os.environ, "SAM3V_BROKER_URL": redis_url, "SAM3V_CACHE": str(tmp_path_factory.mktemp("cache")),
            "SAM3V_STORAGE_URL": "s3://bucket/results"}


def cli(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam3v.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("url,words", [("HTTP://169.254.169.254/", "refused: 169.254.169.254 a link-local address"),
                                       ("http://127.0.0.1:9/hook", "refused: 127.0.0.1 a loopback address"),
                                       ("ftp://example.com/hook", "only http:// and https://")])
def test_an_on_done_url_the_worker_would_refuse_is_refused_at_submit(env, redis_url, tmp_path, url, words):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"video": "s3://bucket/inputs/a.mp4", "prompt": "dog"}\n')
    done = cli(env, "submit", manifest, "--on-done", url, "--check-inputs", "none")
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    message = " ".join(done.stderr.split())
    assert "--on-done" in message and words in message, message
    assert not redis.Redis.from_url(redis_url).zcard("sam3v:jobs"), "no job was recorded"


def test_ids_shaped_like_a_jobs_own_keys_are_unknown_jobs(env, redis_url):
    store = StatusStore(redis.Redis.from_url(redis_url))
    job = store.new_job_id()
    store.create_job(job, "n", {"lane": "batch"}, [{"id": "v", "video": "s3://b/a.mp4", "line": 1}], [])
    assert cli(env, "status", job).returncode == 0
    for inner in (f"{job}:videos", f"{job}:order"):  # a hash and a list of the job's
        for command in ("status", "cancel", "retry", "watch"):
            done = cli(env, command, inner)
            assert done.returncode == 2 and f"no such job: {inner}" in done.stderr, (command, done.stderr)
            assert "internal error" not in done.stderr
