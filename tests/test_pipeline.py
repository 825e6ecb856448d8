"""The distributed pipeline with real parts: redis-server, a moto S3 server, `sam3v worker`
processes (prefork), the tiny SAM 3 model. Manifests go in through `sam3v submit`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest
import redis
from moto.server import ThreadedMotoServer

from tests import media
from tests.guards import assert_found_objects
from tests.services import RedisServer, start_worker, stop_process

BUCKET = "sam3v-test"
FRAMES = 20  # max_frames per video
CHUNK = 8  # frames per chunk: 3 chunks a video


@pytest.fixture(scope="module")
def s3():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client, env
    server.stop()


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def env(s3, redis_server, tiny_model_dir, tmp_path_factory):
    _, aws = s3
    cache = tmp_path_factory.mktemp("worker-cache")
    return {**os.environ, **aws, "SAM3V_BROKER_URL": redis_server.url, "SAM3V_STORAGE_URL": f"s3://{BUCKET}/results",
            "SAM3V_MODEL": str(tiny_model_dir), "SAM3V_TORCH_THREADS": "1", "SAM3V_CACHE": str(cache),
            "SAM3V_TASK_TIME_LIMIT": "40", "SAM3V_VISIBILITY_TIMEOUT": "45", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def clips(s3, media_dir):
    client, _ = s3
    names = {}
    for name, source in (("dog", media.DOG), ("bedroom", media.BEDROOM)):
        path = media.clip(media_dir, FRAMES + 4, source=source)
        client.upload_file(str(path), BUCKET, f"inputs/{name}.mp4")
        names[name] = path
    corrupt = media.random_bytes(media_dir)
    client.upload_file(str(corrupt), BUCKET, "inputs/corrupt.mp4")
    names["corrupt"] = corrupt
    return names


@pytest.fixture
def workers(env, tmp_path):
    procs = [start_worker(env, "gpu", "gpu1", tmp_path / "gpu1.log"),
             start_worker(env, "cpu", "cpu1", tmp_path / "cpu1.log")]
    yield procs
    for p in procs:
        stop_process(p)


def cli(env, *args, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam3v.cli", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=timeout)


def status(env, job) -> dict:
    done = cli(env, "status", job, "--json", "--videos", "all")  # every video: the default is one page
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def wait_terminal(env, job, timeout=900) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        doc = status(env, job)
        if doc["status"] in ("succeeded", "partial", "failed", "cancelled"):
            return doc
        time.sleep(1)
    raise AssertionError(f"job {job} did not finish: {doc}")


def write_manifest(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def line(video: str, vid: str) -> str:
    return json.dumps({"id": vid, "video": video, "max_frames": FRAMES, "chunk_frames": CHUNK})


def reference_masks(tiny_model_dir, clip: Path, out: Path, env) -> bytes:
    done = subprocess.run([sys.executable, "-m", "sam3v.cli", "segment", str(clip), "--prompt", "dog",
                           "--model", str(tiny_model_dir), "--out", str(out), "--max-frames", str(FRAMES),
                           "--device", "cpu"], env={**env, "SAM3V_TORCH_THREADS": "1"},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return (out / "masks.json").read_bytes()


def test_manifest_job_partial_with_a_corrupt_video_and_a_bad_line(env, s3, clips, workers, tiny_model_dir, tmp_path):
    client, _ = s3
    manifest = write_manifest(tmp_path / "m.jsonl", [
        line(f"s3://{BUCKET}/inputs/dog.mp4", "dog"),
        line(f"s3://{BUCKET}/inputs/bedroom.mp4", "bedroom"),
        '{"video": "s3://bucket/x.mp4", "max_frames": "many"}',
        line(f"s3://{BUCKET}/inputs/corrupt.mp4", "corrupt"),
        line(f"s3://{BUCKET}/inputs/dog.mp4", "dog-again"),
    ])
    done = cli(env, "submit", manifest, "--prompt", "dog", "--name", "nightly")
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().splitlines()[-1]
    doc = wait_terminal(env, job)
    assert doc["status"] == "partial"
    assert doc["counts"]["succeeded"] == 3 and doc["counts"]["failed"] == 1
    assert [r["line"] for r in doc["rejected"]] == [3] and "max_frames" in doc["rejected"][0]["reason"]
    by_id = {v["id"]: v for v in doc["videos"]}
    assert "not a video" in by_id["corrupt"]["error"]
    # Same masks as `sam3v segment` on the same clip.
    want = reference_masks(tiny_model_dir, clips["dog"], tmp_path / "ref", env)
    assert_found_objects(json.loads(want))  # equal outputs prove nothing if both are empty
    got = client.get_object(Bucket=BUCKET, Key=f"results/{job}/dog/masks.json")["Body"].read()
    assert json.loads(got)["frames"] == json.loads(want)["frames"]
    assert json.loads(got)["objects"] == json.loads(want)["objects"]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix=f"results/{job}/")["Contents"]}
    assert f"results/{job}/dog/overlay.mp4" in keys and f"results/{job}/bedroom/overlay.mp4" in keys
    assert not any("/work/" in k for k in keys), "chunk states and segments are deleted after finalize"
    results = [json.loads(x) for x in client.get_object(Bucket=BUCKET, Key=f"results/{job}/results.jsonl")["Body"].read().splitlines()]
    # Every manifest line, in line order; the rejected one (its id could not be read) with its reason.
    assert [(r["line"], r["id"], r["state"]) for r in results] == [
        (1, "dog", "succeeded"), (2, "bedroom", "succeeded"), (3, None, "rejected"), (4, "corrupt", "failed"),
        (5, "dog-again", "succeeded")]
    assert "max_frames" in results[2]["error"]


def test_idempotency_key_returns_the_same_job(env, clips, redis_server, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [line(f"s3://{BUCKET}/inputs/dog.mp4", "dog")])
    first = cli(env, "submit", manifest, "--prompt", "dog", "--idempotency-key", "nightly-2026-11-25")
    r = redis.Redis.from_url(redis_server.url)
    queued = r.llen("gpu") + r.llen("cpu")
    second = cli(env, "submit", manifest, "--prompt", "dog", "--idempotency-key", "nightly-2026-11-25")
    assert first.returncode == second.returncode == 0, second.stderr
    assert first.stdout.strip().splitlines()[-1] == second.stdout.strip().splitlines()[-1]
    assert r.llen("gpu") + r.llen("cpu") == queued
    other = write_manifest(tmp_path / "other.jsonl", [line(f"s3://{BUCKET}/inputs/bedroom.mp4", "b")])
    third = cli(env, "submit", other, "--prompt", "dog", "--idempotency-key", "nightly-2026-11-25")
    assert third.returncode == 2 and "different manifest" in third.stderr
    cli(env, "cancel", first.stdout.strip().splitlines()[-1])


def test_cancel_and_retry(env, s3, clips, workers, tmp_path):
    client, _ = s3
    # Cancel: pending work stops and the job ends cancelled.
    many = write_manifest(tmp_path / "many.jsonl", [line(f"s3://{BUCKET}/inputs/dog.mp4", f"d{i}") for i in range(4)])
    job = cli(env, "submit", many, "--prompt", "dog").stdout.strip().splitlines()[-1]
    assert cli(env, "cancel", job).returncode == 0
    doc = wait_terminal(env, job, timeout=300)
    assert doc["status"] == "cancelled" and doc["counts"]["cancelled"] >= 3
    # Retry: only the failed video runs again; once its input is fixed it succeeds.
    client.upload_file(str(clips["corrupt"]), BUCKET, "inputs/fixme.mp4")
    mixed = write_manifest(tmp_path / "mixed.jsonl", [line(f"s3://{BUCKET}/inputs/fixme.mp4", "fixme"),
                                                      line(f"s3://{BUCKET}/inputs/bedroom.mp4", "ok")])
    done = cli(env, "submit", mixed, "--prompt", "dog", "--wait")
    assert done.returncode == 1, "--wait exits 1 when a video failed"
    job = done.stdout.strip().splitlines()[-1]
    first = {v["id"]: v for v in status(env, job)["videos"]}
    assert first["fixme"]["status"] == "failed" and first["ok"]["status"] == "succeeded"
    client.upload_file(str(clips["dog"]), BUCKET, "inputs/fixme.mp4")
    assert cli(env, "retry", job).returncode == 0
    doc = wait_terminal(env, job)
    assert doc["status"] == "succeeded"
    after = {v["id"]: v for v in doc["videos"]}
    assert after["ok"]["finished"] == first["ok"]["finished"], "the succeeded video did not run again"
