"""SAM3V_MAX_PROMPTS bounds the prompts of one video wherever a request comes in: `sam3v segment`
(exit 2 before the model loads), a manifest line sent with `sam3v submit` (rejected, naming the
field and the limit) and the HTTP API (422 naming `prompts`). Real subprocesses; redis-server and
moto from test_pipeline's fixtures."""

from __future__ import annotations

import httpx
import pytest

from tests.services import start_api, stop_process
from tests.test_cli import assert_user_error, run
from tests.test_pipeline import BUCKET, cli, env, redis_server, s3, write_manifest  # noqa: F401  (module fixtures)

KEY = "key-limit-123"


def prompts(n: int) -> list[str]:
    return [f"thing {i}" for i in range(n)]


def segment(clip, model, out, names: list[str], env: dict | None = None):
    flags = [arg for name in names for arg in ("--prompt", name)]
    return run("segment", clip, *flags, "--model", model, "--out", out, "--device", "cpu", env=env)


def test_segment_refuses_too_many_prompts_before_the_model_loads(dog24, tmp_path):
    # No model at that path: a check made after loading would report the model instead.
    missing = tmp_path / "no-model"
    assert_user_error(segment(dog24, missing, tmp_path / "o", prompts(17)),
                      "--prompt: 17 prompts, at most 16 per video (SAM3V_MAX_PROMPTS)")
    lowered = {"SAM3V_MAX_PROMPTS": "2"}
    assert_user_error(segment(dog24, missing, tmp_path / "o", prompts(3), lowered), "--prompt: 3 prompts, at most 2")
    at_limit = segment(dog24, missing, tmp_path / "o", prompts(2), lowered)
    assert_user_error(at_limit, "no-model")
    assert "SAM3V_MAX_PROMPTS" not in at_limit.stderr
    assert not (tmp_path / "o" / "masks.json").exists()


def test_submit_rejects_a_line_over_the_limit(env, tmp_path):  # noqa: F811
    manifest = write_manifest(tmp_path / "m.jsonl", [
        '{"id": "ok", "video": "s3://b/a.mp4", "prompts": ["dog", "cat"]}',
        '{"id": "many", "video": "s3://b/b.mp4", "prompts": ["dog", "cat", "owl"]}'])
    done = cli({**env, "SAM3V_MAX_PROMPTS": "2"}, "submit", manifest, "--strict", "--check-inputs", "none")
    assert done.returncode == 2, done.stderr
    assert "line 2: prompts: 3 prompts, at most 2 per video (SAM3V_MAX_PROMPTS)" in done.stderr, done.stderr


@pytest.fixture(scope="module")
def api(env, tmp_path_factory):  # noqa: F811
    api_env = {**env, "SAM3V_API_KEYS": KEY, "SAM3V_API_S3_BUCKETS": f"{BUCKET}/inputs", "SAM3V_MAX_PROMPTS": "3"}
    server, base = start_api(api_env, tmp_path_factory.mktemp("api") / "api.log")
    yield base
    stop_process(server)


def test_api_answers_422_naming_prompts(api):
    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "sam-3-video", "input_video": f"s3://{BUCKET}/inputs/a.mp4", "prompt": "dog"}
    for extra in (prompts(3), prompts(1000)):  # with prompt: 4, 1001
        r = httpx.post(f"{api}/api/ai/queue", json={**body, "prompts": extra}, headers=headers)
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["field"] == "prompts" and f"{len(extra) + 1} prompts, at most 3" in error["message"], error
    # prompt counts once when prompts repeats it: three concepts, at the limit.
    r = httpx.post(f"{api}/api/ai/queue", json={**body, "prompts": ["dog", "cat", "owl"]}, headers=headers)
    assert r.status_code == 200, r.text
    gen_id = r.json()["generations"][0]["generation_id"]
    assert httpx.delete(f"{api}/api/ai/queue/{gen_id}", headers=headers).json()["status"] == "cancelled"


def test_api_refuses_a_long_prompt_before_storing_anything(api, redis_server):  # noqa: F811
    """A 1 MB prompt was accepted (200) and kept in Redis for the job's retention; it failed only at
    the worker (32 tokens)."""
    import redis

    headers = {"Authorization": f"Bearer {KEY}"}
    body = {"model": "sam-3-video", "input_video": f"s3://{BUCKET}/inputs/a.mp4"}
    before = redis.Redis.from_url(redis_server.url).dbsize()
    for prompt, words in (("x" * 1_000_000, "is 1000000 bytes"), (" ".join(["dog"] * 40), "is 42 tokens")):
        r = httpx.post(f"{api}/api/ai/queue", json={**body, "prompt": prompt, "num_generations": 4}, headers=headers)
        assert r.status_code == 422, r.text[:300]
        error = r.json()["error"]
        assert error["field"] == "prompts" and words in error["message"] and len(error["message"]) < 300, error
    assert redis.Redis.from_url(redis_server.url).dbsize() == before, "nothing of the refused requests was stored"
