"""Output for logs and scripts, with real parts: redis-server, a moto S3 server, `sam3v worker`
processes, the tiny model. stdout is a pipe or a file here, never a terminal, as in cron."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.core.webhook_signing import JOB_HOOKS, key_secret
from tests.services import start_worker, stop_process
from tests.test_pipeline import BUCKET, FRAMES, clips, line, redis_server, s3, write_manifest  # noqa: F401  (fixtures)
from tests.webhook_receiver import readme_verify

SERVER_SECRET = "test-server-secret"
STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


@pytest.fixture(scope="module")
def env(s3, redis_server, tiny_model_dir, tmp_path_factory):  # noqa: F811
    _, aws = s3
    return {**os.environ, **aws, "SAM3V_BROKER_URL": redis_server.url, "SAM3V_STORAGE_URL": f"s3://{BUCKET}/results",
            "SAM3V_MODEL": str(tiny_model_dir), "SAM3V_TORCH_THREADS": "1",
            "SAM3V_CACHE": str(tmp_path_factory.mktemp("worker-cache")), "SAM3V_TASK_TIME_LIMIT": "40",
            "SAM3V_VISIBILITY_TIMEOUT": "45", "PYTHONUNBUFFERED": "1", "SAM3V_API_WEBHOOK_SECRET": SERVER_SECRET,
            "SAM3V_URL_ALLOWLIST": "127.0.0.1", "SAM3V_API_WEBHOOK_BACKOFF": "0.5"}


@pytest.fixture(scope="module")
def workers(env, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    procs = [start_worker(env, "gpu", "gpu1", logs / "gpu1.log"), start_worker(env, "cpu", "cpu1", logs / "cpu1.log")]
    yield procs
    for p in procs:
        stop_process(p)


class Receiver:
    """A local HTTP server keeping every POST (headers, raw body); the first ``fail_first`` get 503."""

    def __init__(self, fail_first: int = 0):
        self.posts: list[tuple[dict, bytes]] = []
        self.fail_first = fail_first
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.posts.append((dict(self.headers), body))
                self.send_response(503 if len(outer.posts) <= outer.fail_first else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/done"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def cli(env, *args, timeout=600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam3v.cli", *map(str, args)], env=env, text=True,
                          timeout=timeout, **({"capture_output": True} | kw))


def test_submit_wait_in_a_log_watch_results_jsonl_and_the_on_done_hook(env, s3, clips, workers, tmp_path):
    client, _ = s3
    manifest = write_manifest(tmp_path / "nightly.jsonl", [
        line(f"s3://{BUCKET}/inputs/dog.mp4", "good"),
        line(f"s3://{BUCKET}/inputs/corrupt.mp4", "corrupt"),
        json.dumps({"id": "bad", "video": f"s3://{BUCKET}/inputs/bedroom.mp4", "max_frames": 0}),
    ])
    receiver = Receiver(fail_first=1)  # the first attempt is answered 503: the hook is retried
    log = tmp_path / "nightly.log"
    with open(log, "w") as out:
        done = cli(env, "submit", manifest, "--prompt", "dog", "--wait", "--on-done", receiver.url,
                   stdout=out, stderr=subprocess.PIPE, capture_output=False)
    text = log.read_text()
    assert done.returncode == 1, (done.returncode, done.stderr, text)  # a video failed: partial
    lines = text.splitlines()
    job = lines[-1]
    assert re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{8}", job), text
    # Whole lines, none wrapped at a terminal's 80 columns: every line but the job id is one event,
    # beginning with its time, and the longest run past 80 columns.
    assert all(re.match(rf"{STAMP} ", x) for x in lines[:-1]), text
    assert max(len(x) for x in lines) > 80, text
    # One timestamped line per finished video, with its state and its results URI or reason.
    good = [x for x in lines if re.match(rf"{STAMP} {job} good succeeded frames={FRAMES} objects=\d+ s3://{BUCKET}/results/{job}/good/masks.json$", x)]
    bad = [x for x in lines if re.match(rf"{STAMP} {job} corrupt failed .*s3://{BUCKET}/inputs/corrupt.mp4", x)]
    assert len(good) == 1 and len(bad) == 1, text
    assert env["SAM3V_CACHE"] not in text, "an error names the worker's cache copy instead of the input"
    assert re.search(rf"^{STAMP} {job} line 3 rejected: max_frames", text, re.M), text
    assert re.search(rf"^{STAMP} results: s3://{BUCKET}/results/{job}/results.jsonl$", text, re.M), text

    # watch shares submit --wait's exit codes: 1 for a partial job; --json ends with the job record.
    watched = cli(env, "watch", job, "--json")
    assert watched.returncode == 1, watched.stderr
    records = [json.loads(x) for x in watched.stdout.splitlines()]
    assert [r["video"] for r in records if r["event"] == "video"] == ["good", "corrupt"]
    assert records[-1]["event"] == "job" and records[-1]["status"] == "partial"
    assert records[-1]["results"] == f"s3://{BUCKET}/results/{job}/results.jsonl"
    assert cli(env, "watch", "no-such-job").returncode == 2

    # From a shell whose storage setting differs from the workers': the results are named where the
    # workers wrote them (recorded by them), not where this shell's setting would put them.
    other = {**env, "SAM3V_STORAGE_URL": "s3://elsewhere/other-prefix"}
    where = f"s3://{BUCKET}/results/{job}/results.jsonl"
    doc = json.loads(cli(other, "status", job, "--json").stdout)
    assert doc["results"] == where, doc
    assert doc["videos"][0]["outputs"]["masks"] == f"s3://{BUCKET}/results/{job}/good/masks.json", doc["videos"][0]
    all_videos = json.loads(cli(other, "status", job, "--json", "--videos", "all").stdout)
    assert all_videos["results"] == where
    assert f"results: {where}" in cli(other, "status", job).stdout
    watched_elsewhere = cli(other, "watch", job, "--json")
    assert json.loads(watched_elsewhere.stdout.splitlines()[-1])["results"] == where, watched_elsewhere.stdout
    assert f"results: {where}" in cli(other, "watch", job).stdout
    assert "elsewhere" not in cli(other, "watch", job).stdout

    # results.jsonl: every manifest line, the rejected one included, with source, frames and objects.
    results = [json.loads(x) for x in client.get_object(Bucket=BUCKET, Key=f"results/{job}/results.jsonl")[
        "Body"].read().decode().splitlines()]
    assert [(r["line"], r["id"], r["state"]) for r in results] == [(1, "good", "succeeded"), (2, "corrupt", "failed"),
                                                                   (3, None, "rejected")]
    assert results[0]["source"] == f"s3://{BUCKET}/inputs/dog.mp4" and results[0]["frames"] == FRAMES
    masks = json.loads(client.get_object(Bucket=BUCKET, Key=f"results/{job}/good/masks.json")["Body"].read())
    assert results[0]["objects"] == len(masks["objects"]) and results[0]["objects"] > 0
    assert results[2]["source"] == f"s3://{BUCKET}/inputs/bedroom.mp4" and "max_frames" in results[2]["error"]
    assert results[1]["frames"] == 0 and "s3://" in results[1]["error"]

    # The on-done hook: retried after the 503, delivered once with a valid signature.
    for _ in range(200):
        if len(receiver.posts) >= 2:
            break
        threading.Event().wait(0.1)
    assert len(receiver.posts) == 2, receiver.posts
    (h1, b1), (h2, b2) = receiver.posts
    assert b1 == b2 and h1["X-Sam3v-Delivery"] == h2["X-Sam3v-Delivery"]
    secret = cli(env, "hook-secret").stdout.strip()
    assert secret == key_secret(SERVER_SECRET, JOB_HOOKS)
    body = readme_verify()(secret, h2, b2, set())
    assert body["event"] == "job_completed" and body["job"] == job and body["status"] == "partial"
    assert body["name"] == "nightly.jsonl", "the manifest's name, not the submitter's path to it"
    assert body["counts"]["succeeded"] == 1 and body["rejected"] == 1
    assert body["results"] == f"s3://{BUCKET}/results/{job}/results.jsonl"

    # Piped `sam3v jobs`: whole ids; --json parses (with jq too).
    listed = cli(env, "jobs")
    assert job in listed.stdout, listed.stdout
    assert job in [j["id"] for j in json.loads(cli(env, "jobs", "--json").stdout)]
    # `sam3v jobs --json | jq -r '.[0].id'`, as a pipe of two processes (no shell).
    listing = subprocess.Popen([sys.executable, "-m", "sam3v.cli", "jobs", "--json"], env=env, stdout=subprocess.PIPE)
    jq = subprocess.run(["jq", "-r", ".[0].id"], stdin=listing.stdout, capture_output=True, text=True)
    listing.stdout.close()
    assert listing.wait() == 0 and jq.returncode == 0 and jq.stdout.strip() == job, jq.stderr


def test_an_unreachable_redis_names_the_setting(env):
    dead = {**env, "SAM3V_BROKER_URL": "redis://127.0.0.1:1/0"}
    done = cli(dead, "jobs")
    assert done.returncode == 1 and "SAM3V_BROKER_URL" in done.stderr and "internal error" not in done.stderr
    done = cli({**dead, "SAM3V_REDIS_URL": "redis://127.0.0.1:1/0"}, "status", "20260101-000000-00000000")
    assert done.returncode == 1 and "SAM3V_REDIS_URL" in done.stderr, done.stderr


def test_overlay_with_no_apply_mask_is_refused(dog24, tmp_path):
    done = cli(os.environ, "segment", dog24, "--prompt", "dog", "--out", tmp_path / "out", "--outputs", "overlay",
               "--no-apply-mask")
    assert done.returncode == 2 and "--no-apply-mask" in done.stderr and "--outputs" in done.stderr
    assert not (tmp_path / "out").exists()


def test_schedule_list_has_next_run_json_and_no_warning(env, s3, redis_server):  # noqa: F811
    client, _ = s3
    client.put_object(Bucket=BUCKET, Key="x.jsonl", Body=line(f"s3://{BUCKET}/inputs/dog.mp4", "d").encode())
    add = cli(env, "schedule", "add", "n1", "--cron", "0 2 * * *", "--manifest", f"s3://{BUCKET}/x.jsonl",
              "--prompt", "dog")
    try:
        assert add.returncode == 0, add.stderr
        listed = cli(env, "schedule", "list", "--json")
        entry = next(e for e in json.loads(listed.stdout) if e["name"] == "n1")
        assert entry["last_run_at"] is None and entry["next_run_at"].endswith("T02:00:00+00:00"), entry
        for done in (add, listed):
            assert "RedBeat" not in done.stderr and "Warning" not in done.stderr, done.stderr
    finally:
        cli(env, "schedule", "remove", "n1")
