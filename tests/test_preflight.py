"""Mistakes caught before any compute (issue 12): a worker that cannot work refuses to start with
one line naming the setting; submit checks its inputs and the workers' storage; schedule add checks
its manifest; segment checks prompts, file, device and model before the model loads. Real
redis-server, moto S3 server and `sam3v` subprocesses throughout."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests import media
from tests.fault_env import wait_for
from tests.services import free_port, start_worker, stop_process
from tests.test_pipeline import BUCKET, cli, env, redis_server, s3, write_manifest  # noqa: F401  (module fixtures)

RECORDS = "sam3v:worker:*"


def _records(url: str) -> list[dict]:
    r = redis.Redis.from_url(url)
    return [json.loads(r.get(k)) for k in r.keys(RECORDS) if r.get(k)]


def _worker_refuses(env, *args, **extra) -> subprocess.CompletedProcess:
    done = cli({**env, **extra}, "worker", *args, timeout=120)
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    assert "ready" not in done.stdout + done.stderr, "Celery started"
    return done


# --- worker start --------------------------------------------------------------------------------

def test_worker_with_a_missing_bucket_refuses_to_start_naming_it(env, redis_server):
    done = _worker_refuses(env, SAM3V_STORAGE_URL="s3://nobucket/results")
    assert "SAM3V_STORAGE_URL=s3://nobucket/results: bucket 'nobucket' does not exist" in done.stderr
    assert _records(redis_server.url) == [], "a refused worker publishes nothing"


def test_worker_refuses_concurrency_0_and_an_unknown_queue(env):
    assert "--concurrency 0: must be 1 or more" in _worker_refuses(env, "--concurrency", "0").stderr
    done = _worker_refuses(env, "--queues", "gpu,cpux")
    assert "--queues: unknown queue 'cpux'" in done.stderr and "interactive-gpu" in done.stderr


def test_worker_refuses_an_unreachable_redis_naming_the_setting(env):
    url = f"redis://127.0.0.1:{free_port()}/0"
    done = _worker_refuses(env, SAM3V_BROKER_URL=url)
    assert f"SAM3V_BROKER_URL={url}: Redis unreachable" in done.stderr


def test_worker_refuses_a_missing_model_naming_the_setting(env, tmp_path):
    done = _worker_refuses(env, "--queues", "gpu", SAM3V_MODEL=str(tmp_path / "no-model"))
    assert f"SAM3V_MODEL={tmp_path / 'no-model'}: model directory not found" in done.stderr


@pytest.fixture(scope="module")
def cpu_worker(env, tmp_path_factory):
    """A live `sam3v worker --queues cpu` (no model load): its record is what submit compares with."""
    log = tmp_path_factory.mktemp("preflight-worker") / "cpu.log"
    proc = start_worker(env, "cpu", "pf", log)
    wait_for(lambda: any(r["node"].startswith("pf@") for r in _records(env["SAM3V_BROKER_URL"])), 60,
             lambda: log.read_text()[-2000:], poll=0.2)
    yield proc
    stop_process(proc)


def test_a_started_worker_publishes_its_settings_and_leaves_no_probe_object(env, s3, cpu_worker):
    client, _ = s3
    mine = [r for r in _records(env["SAM3V_BROKER_URL"]) if r["node"].startswith("pf@")]
    assert len(mine) == 1 and mine[0]["queues"] == ["cpu"], mine
    assert mine[0]["storage_url"] == f"s3://{BUCKET}/results"
    assert mine[0]["endpoint_url"] == env["AWS_ENDPOINT_URL"]
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET, Prefix="results/").get("Contents", [])]
    assert not [k for k in keys if ".sam3v-preflight" in k], keys


# --- submit --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def inputs(s3, media_dir):
    client, _ = s3
    clip = media.clip(media_dir, 8)
    for i in range(22):
        client.upload_file(str(clip), BUCKET, f"pf-inputs/ok{i}.mp4")


def _line(name: str) -> str:
    return json.dumps({"video": f"s3://{BUCKET}/pf-inputs/{name}.mp4", "max_frames": 4})


def _queued(env) -> int:
    r = redis.Redis.from_url(env["SAM3V_BROKER_URL"])
    return r.llen("cpu")


def test_submit_with_every_input_missing_is_refused(env, inputs, cpu_worker, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [_line("gone1"), _line("gone2")])
    before = _queued(env)
    done = cli(env, "submit", manifest, "--prompt", "dog")
    assert done.returncode == 2, done.stderr
    assert "none of the 2 s3:// input(s) checked exists" in done.stderr
    assert f"s3://{BUCKET}/pf-inputs/gone1.mp4" in done.stderr and "wrong bucket or prefix" in done.stderr
    assert _queued(env) == before, "nothing was enqueued"


def test_submit_with_some_inputs_missing_warns_per_line(env, inputs, cpu_worker, tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [_line("ok0"), _line("gone1"), _line("ok1"), _line("gone2")])
    done = cli(env, "submit", manifest, "--prompt", "dog")
    assert done.returncode == 0, done.stderr
    assert f"manifest line 2: s3://{BUCKET}/pf-inputs/gone1.mp4 does not exist" in done.stderr
    assert f"manifest line 4: s3://{BUCKET}/pf-inputs/gone2.mp4 does not exist" in done.stderr
    assert "line 1:" not in done.stderr and "line 3:" not in done.stderr
    job = done.stdout.strip().splitlines()[-1]
    cli(env, "cancel", job)


def test_check_inputs_samples_the_first_20_unless_asked_for_all(env, inputs, cpu_worker, tmp_path):
    lines = [_line(f"ok{i}") for i in range(20)] + [_line("late1"), _line("late2")]
    manifest = write_manifest(tmp_path / "m.jsonl", lines)
    sample = cli(env, "submit", manifest, "--prompt", "dog")
    assert sample.returncode == 0 and "does not exist" not in sample.stderr, sample.stderr
    every = cli(env, "submit", manifest, "--prompt", "dog", "--check-inputs", "all")
    assert every.returncode == 0, every.stderr
    assert [x for x in every.stderr.splitlines() if "does not exist" in x] == [
        f"warning: manifest line 21: s3://{BUCKET}/pf-inputs/late1.mp4 does not exist (its video will fail)",
        f"warning: manifest line 22: s3://{BUCKET}/pf-inputs/late2.mp4 does not exist (its video will fail)"]
    for done in (sample, every):
        cli(env, "cancel", done.stdout.strip().splitlines()[-1])


def test_submit_warns_when_its_storage_differs_from_the_workers_and_refuses_with_strict(env, inputs, cpu_worker,
                                                                                       tmp_path):
    manifest = write_manifest(tmp_path / "m.jsonl", [_line("ok0")])
    other = {**env, "SAM3V_STORAGE_URL": "s3://nobucket/results"}
    done = cli(other, "submit", manifest, "--prompt", "dog")
    assert done.returncode == 0, done.stderr
    assert "SAM3V_STORAGE_URL is s3://nobucket/results here" in done.stderr
    assert f"writes results to s3://{BUCKET}/results" in done.stderr
    cli(env, "cancel", done.stdout.strip().splitlines()[-1])
    before = _queued(env)
    strict = cli(other, "submit", manifest, "--prompt", "dog", "--strict")
    assert strict.returncode == 2 and "(--strict)" in strict.stderr, strict.stderr
    assert _queued(env) == before
    same = cli(env, "submit", manifest, "--prompt", "dog", "--strict")
    assert same.returncode == 0 and "warning" not in same.stderr, same.stderr
    cli(env, "cancel", same.stdout.strip().splitlines()[-1])


def test_submit_warns_when_no_worker_is_live(env, inputs, redis_server, tmp_path):
    # A Redis of its own: the module's worker is not there.
    server = type(redis_server)(tmp_path)
    server.start()
    try:
        manifest = write_manifest(tmp_path / "m.jsonl", [_line("ok0")])
        done = cli({**env, "SAM3V_BROKER_URL": server.url}, "submit", manifest, "--prompt", "dog")
        assert done.returncode == 0, done.stderr
        assert "no live worker serves the batch queues" in done.stderr
    finally:
        server.stop()


# --- schedule add --------------------------------------------------------------------------------

def test_schedule_add_refuses_a_missing_manifest(env, s3):
    missing = f"s3://{BUCKET}/manifests/missing.jsonl"
    done = cli(env, "schedule", "add", "ghost", "--every", "60", "--manifest", missing, "--prompt", "dog")
    assert done.returncode == 2, done.stderr
    assert missing in done.stderr
    assert "ghost" not in cli(env, "schedule", "list").stdout


def test_schedule_add_refuses_a_manifest_with_no_valid_line(env, s3):
    client, _ = s3
    client.put_object(Bucket=BUCKET, Key="manifests/bad.jsonl", Body=b'{"video": "s3://b/x.mp4", "max_frames": "x"}\n')
    bad = f"s3://{BUCKET}/manifests/bad.jsonl"
    done = cli(env, "schedule", "add", "bad", "--every", "60", "--manifest", bad, "--prompt", "dog")
    assert done.returncode == 2 and "no valid video line" in done.stderr and "max_frames" in done.stderr, done.stderr
    assert "bad" not in cli(env, "schedule", "list").stdout


# --- segment: refused before the model loads ------------------------------------------------------

def _imported(stderr: str) -> set[str]:
    """Module names from ``python -X importtime``'s report."""
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def _segment_refused(*args, env=None) -> tuple[str, set[str]]:
    """Run segment with -X importtime; the error line and the modules it imported. The model loader
    lives in workers.model.loading (which imports torch): neither imported means it was never called."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "sam3v.cli", "segment", *map(str, args)],
                          capture_output=True, text=True, timeout=300, env=env)
    errors = [x for x in done.stderr.splitlines() if not x.startswith("import time:")]
    assert done.returncode == 2, "\n".join(errors)
    return "\n".join(errors), _imported(done.stderr)


def _assert_no_model_load(modules: set[str]) -> None:
    assert modules, "no import report"
    assert "workers.model.loading" not in modules and "torch" not in modules and "transformers" not in modules


@pytest.mark.parametrize("case", ["empty-prompt", "not-a-video", "missing-model", "device-cuda"])
def test_segment_refuses_before_the_model_loads(case, dog24, media_dir, tiny_model_dir, tmp_path):
    video, prompt, model, extra = dog24, "dog", tiny_model_dir, []
    if case == "empty-prompt":
        prompt, needle = "  ", "--prompt: a prompt is empty or whitespace"
    elif case == "not-a-video":
        video = media.random_bytes(media_dir)
        needle = "is not a video file"
    elif case == "missing-model":
        model, needle = tmp_path / "nomodel", "model directory not found"
    else:
        if Path("/proc/driver/nvidia/version").exists():
            pytest.skip("this machine has an NVIDIA driver: --device cuda is not refused here")
        extra, needle = ["--device", "cuda"], "--device cuda: no CUDA device"
    error, modules = _segment_refused(video, "--prompt", prompt, "--model", model, "--out", tmp_path / "o", *extra)
    assert needle in error, error
    _assert_no_model_load(modules)


@pytest.mark.parametrize("how", ["offline", "unreachable"])
def test_default_model_fails_at_once_without_network_or_cache(how, dog24, tmp_path):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    env.pop("SAM3V_MODEL", None)
    env.pop("HF_HUB_OFFLINE", None)
    if how == "offline":
        env["HF_HUB_OFFLINE"] = "1"
    else:
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    error, modules = _segment_refused(dog24, "--prompt", "dog", "--out", tmp_path / "o", env=env)
    assert "'facebook/sam3'" in error and "not in the local Hugging Face cache" in error, error
    assert ("HF_HUB_OFFLINE is set" if how == "offline" else "unreachable") in error
    assert "Retrying" not in error and "sam3v model tiny" in error
    assert len(error.strip().splitlines()) == 1, error
    _assert_no_model_load(modules)
