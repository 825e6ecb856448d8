"""`sam3v worker` with no --queues serves everything, interactive first (issue 12): an API
generation sent after a batch job is done before the batch job's video even starts. Real
redis-server, moto S3 server, `sam3v api`, `sam3v submit` and `sam3v worker`, the tiny model."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import redis

from pipeline.core.status import StatusStore
from tests import media
from tests.fault_env import wait_for
from tests.services import start_api, stop_process
from tests.test_pipeline import BUCKET, cli, env, redis_server, s3, write_manifest  # noqa: F401  (module fixtures)

KEY = "dq-key"
FRAMES = 8


def _done(store: StatusStore, job: str) -> bool:
    return store.status_document(job)["status"] in ("succeeded", "partial", "failed", "cancelled")


def test_default_worker_serves_an_api_generation_before_a_queued_batch_job(env, s3, redis_server, media_dir, tmp_path):
    client, _ = s3
    client.upload_file(str(media.clip(media_dir, FRAMES)), BUCKET, "dq/dog.mp4")
    video = f"s3://{BUCKET}/dq/dog.mp4"
    api_env = {**env, "SAM3V_API_KEYS": KEY, "SAM3V_API_S3_BUCKETS": BUCKET}
    api_log, worker_log = tmp_path / "api.log", tmp_path / "worker.log"
    api, base = start_api(api_env, api_log, timeout=60)
    worker = None
    try:
        # No worker yet: the API says so at start and on its health route.
        assert "no live worker consumes interactive-gpu, interactive-cpu" in api_log.read_text()
        health = httpx.get(f"{base}/health").json()
        assert health["status"] == "degraded" and "interactive-gpu" in health["problems"][0], health
        # The batch job is queued first, then the API generation.
        manifest = write_manifest(tmp_path / "m.jsonl", [json.dumps({"id": "batch", "video": video,
                                                                     "max_frames": FRAMES})])
        batch = cli(env, "submit", manifest, "--prompt", "dog")
        assert batch.returncode == 0, batch.stderr
        batch_job = batch.stdout.strip().splitlines()[-1]
        answer = httpx.post(f"{base}/api/ai/queue", headers={"Authorization": f"Bearer {KEY}"},
                            json={"model": "sam-3-video", "input_video": video, "prompt": "dog", "max_frames": FRAMES})
        assert answer.status_code == 200, answer.text
        gen = answer.json()["generations"][0]["generation_id"]
        worker = subprocess.Popen([sys.executable, "-m", "sam3v.cli", "worker", "--concurrency", "1",
                                   "--hostname", "dq@%h"], env=env, stdout=open(worker_log, "ab"),
                                  stderr=subprocess.STDOUT, start_new_session=True)
        store = StatusStore(redis.Redis.from_url(redis_server.url))
        wait_for(lambda: _done(store, gen) and _done(store, batch_job), 300,
                 lambda: f"{store.status_document(gen)}\n{store.status_document(batch_job)}\n"
                         f"{worker_log.read_text()[-3000:]}", poll=0.5)
        generation = store.status_document(gen)["videos"][0]
        queued_first = store.status_document(batch_job)["videos"][0]
        assert generation["status"] == queued_first["status"] == "succeeded", (generation, queued_first)
        # Every task of the generation (probe, chunk, finalize) ran before the batch probe started.
        assert generation["finished"] <= queued_first["started"], (generation, queued_first)
        assert httpx.get(f"{base}/health").json() == {"status": "ok", "problems": []}
    finally:
        if worker is not None:
            stop_process(worker)
        stop_process(api)
