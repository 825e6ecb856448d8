"""What an attacker probed against the API and the workers (issue #10): URI schemes in any case,
local paths in distributed jobs, ids shaped like our own Redis keys, Last-Event-ID past the stream,
invalid JSON bodies, worker cache paths in failure messages, and a Redis restart under a running
API. Real parts: redis-server, moto S3, a `sam3v worker` with the tiny model (run from a directory
an attacker would aim at), `sam3v api` processes, ffprobe."""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from types import SimpleNamespace

import httpx
import pytest
import redis

from pipeline.control.manifest import load_manifest_bytes, parse_manifest
from pipeline.control.producer import enqueue_videos, submit_manifest
from pipeline.core.celery_app import make_app
from pipeline.core.errors import InputError
from pipeline.core.settings import Settings
from pipeline.core.specs import VideoOptions
from pipeline.core.status import StatusStore
from pipeline.core.storage import LocalStorage, open_storage
from pipeline.core.storage.s3 import S3Storage
from pipeline.core.uris import BadUri, Scheme, parse_uri
from sam3v.api.auth import digest
from sam3v.api.service import GENERATION_ID
from tests import media
from tests.services import RedisServer, start_api, start_worker, stop_process
from tests.test_api import KEY_A, A, SSEReader, enqueue, inputs, wait  # noqa: F401  (inputs: a fixture)
from tests.test_pipeline import BUCKET, env, redis_server, s3  # noqa: F401  (module fixtures)
from workers.jobs import context as runtime
from workers.jobs import sources

# --- URIs: parsed once, schemes in any case ----------------------------------------------------


@pytest.mark.parametrize("text,scheme,normal", [
    ("S3://bkt/in/a.mp4", Scheme.S3, "s3://bkt/in/a.mp4"),
    (" HTTP://Example.com/a.mp4 ", Scheme.HTTP, "http://Example.com/a.mp4"),
    ("Https://example.com/a.mp4?x=1", Scheme.HTTPS, "https://example.com/a.mp4?x=1"),
    ("STORAGE:job/v/source", Scheme.STORAGE, "storage:job/v/source"),
    ("Upload://" + "ab" * 16, Scheme.UPLOAD, "upload://" + "ab" * 16),
    ("FILE:///data/b%20c.mp4", Scheme.FILE, "/data/b c.mp4"),
    ("clips/a.mp4", Scheme.LOCAL, "clips/a.mp4"),
    ("C:\\clips\\a.mp4", Scheme.LOCAL, "C:\\clips\\a.mp4"),  # a drive letter, not a scheme
])
def test_schemes_are_read_in_any_case_into_one_normal_form(text, scheme, normal):
    uri = parse_uri(text)
    assert (uri.scheme, uri.text) == (scheme, normal)


@pytest.mark.parametrize("text,words", [
    ("S3://bkt/in/../../etc/passwd", "'..' segments"),
    ("s3://bkt/..", "'..' segments"),
    ("storage:uploads/../jobs/x", "'..' segments"),
    ("s3://bkt/inputs/./x.mp4", "'.' or empty segments"),  # the worker's storage refused it, after the job was accepted
    ("s3://bkt/inputs//x.mp4", "'.' or empty segments"),
    ("s3://bkt/inputs/", "'.' or empty segments"),
    ("s3://bkt", "s3://bucket/key"),
    ("ftp://host/a.mp4", "'ftp'"),
    ("local:a.mp4", "'local'"),
    ("upload://../../etc", "upload://<id>"),
    ("file://host/a.mp4", "local file://"),
    ("https:///a.mp4", "no host"),
])
def test_bad_uris_are_refused_naming_them(text, words):
    with pytest.raises(BadUri) as refused:
        parse_uri(text)
    assert words in str(refused.value) and repr(text) in str(refused.value)


def test_the_manifest_stores_the_normal_form_and_refuses_dot_dot_keys():
    data = b"\n".join(json.dumps(line).encode() for line in (
        {"video": "S3://bkt/in/a.mp4"}, {"video": "HTTPS://example.com/b.mp4"},
        {"video": "S3://bkt/in/../../secret.mp4"}, {"video": "storage:jobs/x/video/overlay.mp4"}))
    result = parse_manifest(data, "m.jsonl", "dog")
    assert [i.video for i in result.items] == ["s3://bkt/in/a.mp4", "https://example.com/b.mp4"]
    reasons = {r.line: r.reason for r in result.rejected}
    assert reasons[3].startswith("video:") and "'..' segments" in reasons[3]
    assert reasons[4].startswith("video:") and "'storage'" in reasons[4], "our storage is not a caller's input"


def test_storage_and_manifest_locations_read_the_scheme_in_any_case(tmp_path):
    store = open_storage("S3://bkt/prefix/")
    assert isinstance(store, S3Storage) and (store.bucket, store.prefix) == ("bkt", "prefix")
    assert isinstance(open_storage(f"FILE://{tmp_path}"), LocalStorage)

    def bucket(name: str) -> SimpleNamespace:  # an S3 storage that echoes what it was asked for
        return SimpleNamespace(get_bytes=lambda key: f"{name}:{key}".encode())

    assert load_manifest_bytes("S3://bkt/dir/m.csv", bucket) == b"bkt:dir/m.csv"
    with pytest.raises(InputError, match="'..' segments"):
        load_manifest_bytes("s3://bkt/dir/../m.csv", bucket)
    with pytest.raises(InputError, match="'https' is not supported"):
        load_manifest_bytes("https://example.com/m.csv", bucket)


def test_the_worker_reads_local_paths_only_for_jobs_that_allowed_them(tmp_path, monkeypatch):
    """The producer records allow_local in the job; stage_source reads it back from the worker's
    status store (the embedded in-process one here)."""
    monkeypatch.setattr(runtime, "_configured", runtime._configured)  # restored afterwards
    settings = Settings(broker_url=None, redis_url=None, storage_url=str(tmp_path / "store"),
                        cache=tmp_path / "cache")
    runtime.configure(settings)
    try:
        store, storage = runtime.context().status, runtime.context().storage
        line = b'{"id": "v", "video": "clips/a.mp4", "prompt": "dog"}\n'
        embedded = submit_manifest(make_app(settings), store, line, "m.jsonl", allow_local=True)
        assert store.job_spec(embedded.job_id)["allow_local"] is True
        assert sources.stage_source(storage, settings, embedded.job_id, "v", {"video": "clips/a.mp4"}) == "clips/a.mp4"

        distributed = store.new_job_id()  # a job whose producer did not allow local paths
        item = parse_manifest(line, "m.jsonl", allow_local=True).items[0].model_dump()
        store.create_job(distributed, "t", {"lane": "batch"}, [item], [])
        for video in ("clips/a.mp4", "file:///etc/passwd"):
            with pytest.raises(InputError, match=rf"^{video}: local paths are read only in embedded mode"):
                sources.stage_source(storage, settings, distributed, "v", {"video": video})
        staged = sources.stage_source(storage, settings, distributed, "v", {"video": "S3://bkt/a.mp4"})
        assert staged == "s3://bkt/a.mp4"
    finally:
        runtime.context.cache_clear()


def test_a_probe_failure_names_the_input_not_the_workers_copy(media_dir, tmp_path):
    from workers.chunks.video_steps import prepare

    copy = tmp_path / "cache" / "sources" / "job__vid__job__vid__source"
    copy.parent.mkdir(parents=True)
    shutil.copy(media.random_bytes(media_dir), copy)
    with pytest.raises(InputError) as failed:
        prepare(copy, VideoOptions(), "https://example.com/clip.mp4", None)
    message = str(failed.value)
    assert message.startswith("https://example.com/clip.mp4 is not a video file"), message
    assert str(tmp_path) not in message and "job__vid" not in message


def test_generation_ids_have_the_shape_new_job_id_makes():
    ids = [StatusStore(redis.Redis()).new_job_id() for _ in range(20)]  # no command is sent
    assert all(GENERATION_ID.fullmatch(i) for i in ids), ids


# --- the API and a worker, with real parts -----------------------------------------------------


@pytest.fixture(scope="module")
def site(env, inputs, tmp_path_factory, media_dir):  # noqa: F811
    """A worker run from a directory an attacker aims local paths at (a clip there, and
    ``S3:/bucket/`` so that ``S3://bucket/../../clip.mp4`` resolves to it as a relative path), and
    an API in front of it."""
    logs = tmp_path_factory.mktemp("abuse-logs")
    workdir = tmp_path_factory.mktemp("worker-cwd")
    shutil.copy(media.clip(media_dir, 8), workdir / "clip.mp4")
    (workdir / "S3:" / "bucket").mkdir(parents=True)
    api_env = {**env, "SAM3V_API_KEYS": KEY_A, "SAM3V_URL_ALLOWLIST": f"127.0.0.1:{inputs['port']}",
               "SAM3V_API_SSE_PING": "1", "SAM3V_API_S3_BUCKETS": f"{BUCKET}/inputs"}
    here = os.getcwd()
    os.chdir(workdir)  # the worker process starts in it
    try:
        worker = start_worker(api_env, "gpu,cpu,interactive-gpu,interactive-cpu", "abuse", logs / "worker.log")
    finally:
        os.chdir(here)
    server, base = start_api(api_env, logs / "api.log")
    yield {"base": base, "env": api_env, "workdir": workdir, "logs": logs}
    stop_process(server)
    stop_process(worker)


def _queue(site, input_video: str, **extra) -> httpx.Response:
    return httpx.post(f"{site['base']}/api/ai/queue", headers=A,
                      json={"model": "sam-3-video", "input_video": input_video, "prompt": "dog", **extra})


def test_s3_inputs_in_any_case_meet_the_bucket_allow_list(site, s3):  # noqa: F811
    client, _ = s3
    client.upload_file(str(site["workdir"] / "clip.mp4"), BUCKET, "inputs/abuse-clip.mp4")
    for refused, words in ((f"S3://{BUCKET}/results/someone/video/overlay.mp4", "SAM3V_API_S3_BUCKETS"),
                           (f"s3://{BUCKET}/inputs/../results/someone/video/overlay.mp4", "'..' segments"),
                           ("S3://bucket/../../clip.mp4", "'..' segments")):
        r = _queue(site, refused)
        assert r.status_code == 422 and r.json()["error"]["field"] == "input_video", (refused, r.text)
        assert words in r.json()["error"]["message"], (refused, r.text)
    # Upper case is still S3: read from the bucket, not opened as a path in the worker's directory.
    r = _queue(site, f"S3://{BUCKET}/inputs/abuse-clip.mp4", max_frames=3)
    assert r.status_code == 200, r.text
    doc = wait(site, r.json()["generations"][0]["generation_id"])
    assert doc["status"] == "succeeded" and doc["input_video"] == f"s3://{BUCKET}/inputs/abuse-clip.mp4", doc


def test_a_worker_never_opens_a_local_path_for_a_distributed_job(site):
    """A job recorded without allow_local (as any producer but `sam3v run` records it) naming local
    paths, the attack string among them, relative to the worker's own directory where the files
    exist: each video fails naming its input; nothing is read."""
    settings = Settings(broker_url=site["env"]["SAM3V_BROKER_URL"])
    store = StatusStore(redis.Redis.from_url(site["env"]["SAM3V_BROKER_URL"]))
    lines = [{"id": "rel", "video": "clip.mp4"}, {"id": "attack", "video": "S3://bucket/../../clip.mp4"}]
    items = []
    for line in lines:  # as stored by a producer that did not check (the check is the worker's too)
        parsed = parse_manifest(json.dumps({"id": line["id"], "video": "clip.mp4", "prompt": "dog",
                                            "max_frames": 3}).encode(), "m.jsonl", allow_local=True)
        items.append({**parsed.items[0].model_dump(), "video": line["video"]})
    assert (site["workdir"] / "S3:/bucket/../../clip.mp4").resolve() == (site["workdir"] / "clip.mp4").resolve()
    job_id = store.new_job_id()
    store.create_job(job_id, "distributed", {"source": "m.jsonl", "lane": "batch"}, items, [])
    enqueue_videos(make_app(settings), job_id, ["rel", "attack"])
    end = time.monotonic() + 120
    while time.monotonic() < end and store.status_document(job_id)["status"] not in ("succeeded", "failed", "partial"):
        time.sleep(0.3)
    videos = {v: store.video(job_id, v) for v in ("rel", "attack")}
    assert all(v.get("status") == "failed" for v in videos.values()), videos
    assert not any("frames_total" in v for v in videos.values()), f"a probe read a local file: {videos}"
    assert videos["rel"]["error"].startswith("clip.mp4: local paths are read only in embedded mode"), videos
    assert videos["attack"]["error"].startswith("'S3://bucket/../../clip.mp4': a key with '..' segments"), videos


def test_path_ids_not_shaped_like_ours_are_404_before_redis(site):
    base = site["base"]
    gen_id = _queue(site, f"s3://{BUCKET}/inputs/never-there.mp4").json()["generations"][0]["generation_id"]
    assert GENERATION_ID.fullmatch(gen_id)
    owner_index = f"owner:{digest(KEY_A)}"  # this key's own index, a sorted set: WRONGTYPE for HGETALL
    assert redis.Redis.from_url(site["env"]["SAM3V_BROKER_URL"]).type(f"sam3v:gen:{owner_index}") == b"zset"
    for bad in (owner_index, "x:videos", f"{gen_id}:videos", "x" * 300, gen_id[:-8] + "ABCDEF12"):
        for method, path in (("GET", f"/api/ai/queue/{bad}"), ("DELETE", f"/api/ai/queue/{bad}"),
                             ("POST", f"/api/ai/queue/{bad}/retry"), ("GET", f"/api/ai/queue/{bad}/files/overlay")):
            r = httpx.request(method, f"{base}{path}", headers=A)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (method, path, r.text)
    assert httpx.get(f"{base}/api/ai/queue/{gen_id}", headers=A).status_code == 200


def test_invalid_json_names_the_body_and_where(site):
    r = httpx.post(f"{site['base']}/api/ai/queue", headers={**A, "Content-Type": "application/json"},
                   content=b'{"model": "sam-3-video", ')
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["field"] == "body" and error["message"].startswith("body: not valid JSON"), error
    assert "at character 25" in error["message"], error


def test_a_failure_message_names_the_input_url_not_the_workers_copy(site, inputs):  # noqa: F811
    url = f"{inputs['base']}/corrupt.mp4"
    doc = wait(site, enqueue(site, {"input_video": url, "prompt": "dog"}))
    assert doc["status"] == "failed" and doc["error_message"].startswith(f"{url} is not a video file"), doc
    assert site["env"]["SAM3V_CACHE"] not in doc["error_message"], doc


def test_last_event_id_past_the_stream_resumes_from_the_newest_event(site):
    base = site["base"]
    for too_big in ("18446744073709551616-0", "1-18446744073709551616"):
        r = httpx.get(f"{base}/api/events", headers={**A, "Last-Event-ID": too_big})
        assert r.status_code == 422 and r.json()["error"]["field"] == "Last-Event-ID", r.text
    newest = redis.Redis.from_url(site["env"]["SAM3V_BROKER_URL"]).xinfo_stream("sam3v:events")["last-generated-id"]
    ahead = "99999999999999-0"
    assert tuple(map(int, newest.decode().split("-"))) < (99999999999999, 0)
    reader = SSEReader(site, A, last_event_id=ahead)
    try:
        gen_id = _queue(site, f"s3://{BUCKET}/inputs/missing.mp4").json()["generations"][0]["generation_id"]
        assert reader.until(lambda ev: any(e[2]["generation_id"] == gen_id for e in ev), 60), reader.events
        assert [e[0] for e in reader.events if e[2]["generation_id"] == gen_id] == ["media_generation_failed"]
    finally:
        reader.close()


# --- a Redis restart under a running API -------------------------------------------------------


def test_the_first_request_after_a_redis_restart_is_answered(inputs, tmp_path):  # noqa: F811
    """redis-server killed -9 and started again on its port and directory (AOF: nothing lost)
    while `sam3v api` runs: the first request on each of its clients (the async one of
    GET /api/ai/queue/{id}, the sync one of the list) finds a dead pooled connection, and must
    still answer 200."""
    (tmp_path / "redis").mkdir()
    server = RedisServer(tmp_path / "redis")
    server.start()
    api_env = {**os.environ, "SAM3V_BROKER_URL": server.url, "SAM3V_STORAGE_URL": str(tmp_path / "data"),
           "SAM3V_API_KEYS": KEY_A, "SAM3V_URL_ALLOWLIST": f"127.0.0.1:{inputs['port']}"}
    api, base = start_api(api_env, tmp_path / "api.log")
    try:
        gen_id = enqueue({"base": base}, {"input_video": f"{inputs['base']}/clip.mp4", "prompt": "dog"})
        # Both clients hold pooled connections now.
        assert httpx.get(f"{base}/api/ai/queue/{gen_id}", headers=A).status_code == 200
        assert httpx.get(f"{base}/api/ai/queue", headers=A).status_code == 200
        before = redis.Redis.from_url(server.url).info("server")["run_id"]
        server.kill()
        assert server.proc.returncode == -signal.SIGKILL
        server.start()
        assert redis.Redis.from_url(server.url).info("server")["run_id"] != before, "a new server process"
        first = httpx.get(f"{base}/api/ai/queue/{gen_id}", headers=A)
        assert first.status_code == 200 and first.json()["status"] == "queued", first.text
        listed = httpx.get(f"{base}/api/ai/queue", headers=A)
        assert listed.status_code == 200 and gen_id in [g["generation_id"] for g in listed.json()["generations"]], \
            listed.text
    finally:
        stop_process(api)
        server.stop()
