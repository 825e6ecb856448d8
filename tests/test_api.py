"""The HTTP API with real parts: redis-server, moto S3, one `sam3v worker` on all four queues with
the tiny model, a local http.server serving the inputs, and the API in a uvicorn subprocess. Also
runs the hosted documentation's curl/jq/awk scripts (stray spaces removed) against it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import redis

from tests import media
from tests.services import free_port, start_api, start_worker, stop_process
from tests.test_pipeline import BUCKET, env, redis_server, s3  # noqa: F401  (module fixtures)
from tests.webhook_receiver import readme_verify

KEY_A, KEY_B = "key-alpha-123", "key-beta-456"
A = {"Authorization": f"Bearer {KEY_A}"}
B = {"Authorization": f"Bearer {KEY_B}"}
FRAMES = 6
SLOW_SECONDS = 4


@pytest.fixture(scope="module")
def inputs(media_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("www")
    shutil.copy(media.clip(media_dir, FRAMES + 2), root / "clip.mp4")
    shutil.copy(media.random_bytes(media_dir), root / "corrupt.mp4")
    other_port = free_port()  # nothing listens there, and it is not allowed anyway
    redirects = {"/redir-meta": "http://169.254.169.254/latest/meta-data/",
                 "/redir-other": f"http://127.0.0.1:{other_port}/x.mp4"}

    hooks: list[dict] = []  # webhook deliveries received: headers and raw body
    fail_first: set[str] = set()  # delivery ids whose first attempt gets a 500

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(root), **k)

        def do_POST(self):  # noqa: N802  (a webhook receiver)
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            delivery = self.headers.get("X-Sam3v-Delivery", "")
            hooks.append({"headers": dict(self.headers), "body": body, "path": self.path})
            failing = self.path == "/hook-fails" or (self.path == "/hook-flaky" and delivery not in fail_first)
            if self.path == "/hook-flaky":
                fail_first.add(delivery)
            self.send_response(500 if failing else 204)
            self.end_headers()

        def do_GET(self):  # noqa: N802
            if self.path.startswith("/slow/"):  # a media server that takes its time
                time.sleep(SLOW_SECONDS)
                self.path = self.path[len("/slow"):]
            if self.path in redirects:
                self.send_response(302)
                self.send_header("Location", redirects[self.path])
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield {"base": f"http://127.0.0.1:{server.server_port}", "port": server.server_port, "other_port": other_port,
           "hooks": hooks}
    server.shutdown()


@pytest.fixture(scope="module")
def api(env, inputs, tmp_path_factory):  # noqa: F811
    logs = tmp_path_factory.mktemp("api-logs")
    api_env = {**env, "SAM3V_API_KEYS": f"{KEY_A},{KEY_B}", "SAM3V_URL_ALLOWLIST": f"127.0.0.1:{inputs['port']}",
               "SAM3V_API_SSE_PING": "1", "SAM3V_API_S3_BUCKETS": f"{BUCKET}/inputs", "SAM3V_API_WEBHOOK_BACKOFF": "0.2",
               "SAM3V_API_WEBHOOK_ATTEMPTS": "3"}
    worker = start_worker(api_env, "gpu,cpu,interactive-gpu,interactive-cpu", "api1", logs / "worker.log")
    server, base = start_api(api_env, logs / "api.log")
    yield {"base": base, "logs": logs, "env": api_env}
    stop_process(server)
    stop_process(worker)


def enqueue(api, body, headers=A) -> str:
    r = httpx.post(f"{api['base']}/api/ai/queue", json={"model": "sam-3-video", **body}, headers=headers)
    assert r.status_code == 200, r.text
    gens = r.json()["generations"]
    assert gens[0]["status"] == "queued"
    return gens[0]["generation_id"]


def wait(api, gen_id, timeout=180) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        doc = httpx.get(f"{api['base']}/api/ai/queue/{gen_id}", headers=A).json()
        if doc["status"] in ("succeeded", "failed", "cancelled"):
            return doc
        time.sleep(0.3)
    raise AssertionError(f"{gen_id} did not finish: {doc}")


def cancelled_marker(api, inputs, headers) -> str:
    """A generation of this key, cancelled at once: its event marks how far a reader has got."""
    gen_id = enqueue(api, {"input_video": f"{inputs['base']}/clip.mp4", "prompt": "dog"}, headers)
    assert httpx.delete(f"{api['base']}/api/ai/queue/{gen_id}", headers=headers).status_code == 200
    return gen_id


def saw(gen_id: str):
    return lambda events: any(e[2]["generation_id"] == gen_id for e in events)


class SSEReader:
    """Reads /api/events in a thread; records (event, id, data) of every event."""

    def __init__(self, api, headers, last_event_id=None):
        self.events: list[tuple[str, str, dict]] = []
        self.pings = 0
        self.stop = threading.Event()
        self.connected = threading.Event()
        headers = dict(headers)
        if last_event_id:
            headers["Last-Event-ID"] = last_event_id
        self.thread = threading.Thread(target=self._run, args=(api["base"], headers), daemon=True)
        self.thread.start()
        assert self.connected.wait(10)

    def _run(self, base, headers):
        with httpx.stream("GET", f"{base}/api/events", headers=headers, timeout=httpx.Timeout(5.0)) as r:
            assert r.status_code == 200
            self.connected.set()
            event = eid = None
            for line in r.iter_lines():
                if self.stop.is_set():
                    return
                if line.startswith(":"):
                    self.pings += 1
                elif line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("id: "):
                    eid = line[4:]
                elif line.startswith("data: "):
                    self.events.append((event, eid, json.loads(line[6:])))

    def until(self, predicate, timeout):
        end = time.monotonic() + timeout
        while time.monotonic() < end and not predicate(self.events):
            time.sleep(0.1)
        return predicate(self.events)

    def close(self):
        self.stop.set()
        self.thread.join(10)


def test_auth_models_and_docs(api):
    base = api["base"]
    assert httpx.get(f"{base}/api/ai/models/sam-3-video").status_code == 401
    r = httpx.get(f"{base}/api/ai/models/sam-3-video", headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert httpx.get(f"{base}/api/ai/queue/x", headers={"Authorization": "Bearer nope"}).status_code == 401
    assert httpx.get(f"{base}/api/events", headers={"Authorization": "Basic a2V5"}).status_code == 401
    # (A key with trailing whitespace, as the hosted scripts send it, is tested through curl below.)
    r = httpx.get(f"{base}/api/ai/models/sam-3-video", headers={"Authorization": f"bearer  {KEY_A}"})
    assert r.status_code == 200
    model = r.json()
    schema = model["json_request_schema"]
    assert model["id"] == "sam-3-video"
    # prompt, as the hosted schema has it, unless the request prompts objects visually
    assert set(schema["required"]) == {"input_video"} and {"required": ["prompt"]} in schema["anyOf"]
    assert schema["properties"]["input_video"]["format"] == "uri"
    assert schema["properties"]["apply_mask"] == {**schema["properties"]["apply_mask"], "type": "boolean", "default": True}
    r = httpx.get(f"{base}/api/ai/models/sam-2-video", headers=A)
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert httpx.get(f"{base}/docs").status_code == 200
    paths = httpx.get(f"{base}/openapi.json").json()["paths"]
    for p in ("/api/ai/queue", "/api/ai/queue/{generation_id}", "/api/ai/queue/{generation_id}/retry",
              "/api/ai/videos/generate", "/api/events", "/api/ai/models/{model_id}", "/api/ai/uploads",
              "/api/ai/webhooks/secret"):
        assert p in paths
    for extra in ("prompts", "detection_threshold", "start_frame", "max_frames", "outputs", "mask_opacity",
                  "webhook_url"):
        assert extra in schema["properties"], extra


@pytest.mark.parametrize("body,field", [
    ({"input_video": "s3://b/k.mp4"}, "prompt"),
    ({"input_video": "s3://b/k.mp4", "prompt": "   "}, "prompt"),
    ({"prompt": "dog"}, "input_video"),
    ({"input_video": "/etc/passwd", "prompt": "dog"}, "input_video"),
    ({"input_video": "file:///etc/passwd", "prompt": "dog"}, "input_video"),
    ({"input_video": "s3://b/k.mp4", "prompt": "dog", "apply_mask": "maybe"}, "apply_mask"),
    ({"input_video": "s3://b/k.mp4", "prompt": "dog", "num_generations": 5}, "num_generations"),
    ({"input_video": "s3://b/k.mp4", "prompt": "dog", "max_frames": 0}, "max_frames"),
    ({"input_video": "s3://b/k.mp4", "prompt": "dog", "outputs": ["gif"]}, "outputs.0"),
    ({"input_video": "s3://b/k.mp4", "prompt": "dog", "start_frame": -1}, "start_frame"),
    ({"input_video": "s3://b/k.mp4", "prompt": "dog", "detection_threshold": 1.5}, "detection_threshold"),
    ({"input_video": "s3://b/k.mp4", "prompt": "dog", "webhook_url": "file:///tmp/x"}, "webhook_url"),
    ({"input_video": "upload://../../etc", "prompt": "dog"}, "input_video"),
])
def test_bad_requests_name_the_field(api, body, field):
    r = httpx.post(f"{api['base']}/api/ai/queue", json={"model": "sam-3-video", **body}, headers=A)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field and r.json()["error"]["message"]


def test_unknown_model_and_refused_urls_at_enqueue(api, inputs):
    base = api["base"]
    r = httpx.post(f"{base}/api/ai/queue", json={"model": "sam-9", "input_video": "s3://b/k.mp4", "prompt": "x"},
                   headers=A)
    assert r.status_code == 404
    for url in (f"http://127.0.0.1:{inputs['other_port']}/x.mp4", "http://169.254.169.254/latest/meta-data/"):
        r = httpx.post(f"{base}/api/ai/queue", json={"model": "sam-3-video", "input_video": url, "prompt": "x"},
                       headers=A)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "input_video" and "refused" in r.json()["error"]["message"]


def test_queue_poll_results_failures_and_sse(api, inputs):
    base = api["base"]
    reader = SSEReader(api, A)
    other = SSEReader(api, B, last_event_id="0-0")
    try:
        good = enqueue(api, {"input_video": f"{inputs['base']}/clip.mp4", "prompt": "dog", "max_frames": FRAMES,
                             "outputs": ["overlay", "mask", "rle"]})
        corrupt = enqueue(api, {"input_video": f"{inputs['base']}/corrupt.mp4", "prompt": "dog"})
        meta = enqueue(api, {"input_video": f"{inputs['base']}/redir-meta", "prompt": "dog"})
        local = enqueue(api, {"input_video": f"{inputs['base']}/redir-other", "prompt": "dog"})
        ours = [good, corrupt, meta, local]
        # Someone else's generation does not exist for key B.
        assert httpx.get(f"{base}/api/ai/queue/{good}", headers=B).status_code == 404
        assert httpx.delete(f"{base}/api/ai/queue/{good}", headers=B).status_code == 404
        assert httpx.post(f"{base}/api/ai/queue/{corrupt}/retry", headers=B).status_code == 404

        doc = wait(api, good)
        assert doc["status"] == "succeeded", doc
        assert doc["model"] == "sam-3-video" and doc["prompt"] == "dog" and doc["apply_mask"] is True
        assert set(doc["result_urls"]) == {"overlay", "mask", "masks"}
        assert doc["result_url"] == doc["result_urls"]["overlay"]
        video = httpx.get(doc["result_url"])
        assert video.status_code == 200 and video.content[4:8] == b"ftyp"
        masks = httpx.get(doc["result_urls"]["masks"]).json()
        assert masks["video"]["num_frames"] == FRAMES
        assert isinstance(doc["created_at"], int) and doc["updated_at"] >= doc["created_at"]

        bad = wait(api, corrupt)
        assert bad["status"] == "failed" and "not a video" in bad["error_message"] and bad["result_url"] is None
        for gen_id in (meta, local):  # redirects to refused hosts: allowed at enqueue, failed by the fetcher
            d = wait(api, gen_id)
            assert d["status"] == "failed" and "refused" in d["error_message"], d

        # SSE: each completion exactly once, with the ids the client scripts match on.
        assert reader.until(lambda ev: {e[2]["generation_id"] for e in ev} >= set(ours), 30), reader.events
        # A later event marks how far each reader has got: a repeat of ours would come before it.
        marker_a, marker_b = cancelled_marker(api, inputs, A), cancelled_marker(api, inputs, B)
        assert reader.until(saw(marker_a), 30), f"the marker's event did not reach the reader: {reader.events}"
        mine = [e for e in reader.events if e[2]["generation_id"] in ours]
        assert sorted(e[2]["generation_id"] for e in mine) == sorted(ours)
        kinds = {e[2]["generation_id"]: (e[0], e[2]) for e in mine}
        assert kinds[good][0] == "media_generation_completed" and kinds[good][1]["result_url"]
        for gen_id in (corrupt, meta, local):
            assert kinds[gen_id][0] == "media_generation_failed" and kinds[gen_id][1]["error_message"]
        assert reader.pings >= 1
        # Resume after the first of ours: the rest again, nothing lost, nothing repeated.
        first_id = mine[0][1]
        resumed = SSEReader(api, A, last_event_id=first_id)
        try:
            want = {e[2]["generation_id"] for e in mine[1:]}
            assert resumed.until(lambda ev: {e[2]["generation_id"] for e in ev} >= want, 15)
            assert resumed.until(saw(marker_a), 15), f"the marker's event did not reach the resumed reader: {resumed.events}"
            got = [e for e in resumed.events if e[2]["generation_id"] in ours]
            assert [e[1] for e in got] == [e[1] for e in mine[1:]]
        finally:
            resumed.close()
        # Key B saw none of it, though it read the whole stream from the start (up to its own marker).
        assert other.until(saw(marker_b), 15), f"key B's marker did not reach its reader: {other.events}"
        assert not [e for e in other.events if e[2]["generation_id"] in ours]
        assert other.pings >= 1
    finally:
        reader.close()
        other.close()

    # Listing, filters, retry of a failed one, cancel.
    listed = httpx.get(f"{base}/api/ai/queue", params={"status": "failed"}, headers=A).json()["generations"]
    assert {corrupt, meta, local} <= {g["generation_id"] for g in listed} and good not in {g["generation_id"] for g in listed}
    assert [g["generation_id"] for g in httpx.get(f"{base}/api/ai/queue", headers=B).json()["generations"]] == [marker_b]
    assert httpx.post(f"{base}/api/ai/queue/{good}/retry", headers=A).status_code == 409
    r = httpx.post(f"{base}/api/ai/queue/{corrupt}/retry", headers=A)
    assert r.status_code == 200 and r.json()["status"] == "queued"
    assert wait(api, corrupt)["status"] == "failed"
    slow = enqueue(api, {"input_video": f"{inputs['base']}/clip.mp4", "prompt": "dog"})
    r = httpx.delete(f"{base}/api/ai/queue/{slow}", headers=A)
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert wait(api, slow)["status"] == "cancelled"
    assert slow in {g["generation_id"] for g in
                    httpx.get(f"{base}/api/ai/queue", params={"status": "cancelled"}, headers=A).json()["generations"]}


def test_sync_generate(api, inputs):
    base = api["base"]
    body = {"model": "sam-3-video", "input_video": f"{inputs['base']}/clip.mp4", "prompt": "dog",
            "max_frames": 4, "apply_mask": False}
    r = httpx.post(f"{base}/api/ai/videos/generate", json=body, headers=A, timeout=300)
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["status"] == "succeeded" and doc["model"] == "sam-3-video" and doc["generation_id"]
    assert doc["result_url"] == doc["result_urls"]["mask"]
    assert httpx.get(doc["result_url"]).content[4:8] == b"ftyp"
    r = httpx.post(f"{base}/api/ai/videos/generate", json={**body, "response_format": "b64_json"}, headers=A, timeout=300)
    import base64

    assert r.status_code == 200 and base64.b64decode(r.json()["b64_json"])[4:8] == b"ftyp"
    r = httpx.post(f"{base}/api/ai/videos/generate", json={**body, "input_video": f"{inputs['base']}/corrupt.mp4"},
                   headers=A, timeout=300)
    assert r.status_code == 422 and r.json()["error"]["code"] == "generation_failed"
    assert r.json()["error"]["generation_id"] and "not a video" in r.json()["error"]["message"]


def test_sync_generate_answers_504_with_the_id_after_the_limit(api, inputs, tmp_path):
    """SAM3V_API_SYNC_TIMEOUT: a generation still running at the limit gets 504 with its id, and the
    caller can go on polling it to its result."""
    server, base = start_api({**api["env"], "SAM3V_API_SYNC_TIMEOUT": "1"}, tmp_path / "api.log")
    try:
        r = httpx.post(f"{base}/api/ai/videos/generate", headers=A, timeout=60,
                       json={"model": "sam-3-video", "input_video": f"{inputs['base']}/slow/clip.mp4",
                             "prompt": "dog", "max_frames": 3})
        assert r.status_code == 504, r.text
        err = r.json()["error"]
        gen_id = err["generation_id"]
        assert err["code"] == "timeout" and f"/api/ai/queue/{gen_id}" in err["message"]
        # How soon after the limit it answers: benchmarks/bench_limits.py.
        assert httpx.get(f"{base}/api/ai/queue/{gen_id}", headers=A).json()["status"] in ("queued", "processing")
        doc = wait({"base": base}, gen_id)
        assert doc["status"] == "succeeded", doc
        assert httpx.get(doc["result_url"]).content[4:8] == b"ftyp"
    finally:
        stop_process(server)


def test_start_frame_and_detection_threshold_reach_the_pipeline(api, inputs):
    doc = wait(api, enqueue(api, {"input_video": f"{inputs['base']}/clip.mp4", "prompt": "dog", "start_frame": 2,
                                  "max_frames": 3, "detection_threshold": 0.3, "outputs": ["mask", "rle"]}))
    assert doc["status"] == "succeeded", doc
    assert doc["params"]["start_frame"] == 2 and doc["params"]["detection_threshold"] == 0.3
    served = httpx.get(doc["result_urls"]["masks"])
    masks = served.json()
    assert [f["frame"] for f in masks["frames"]] == [2, 3, 4]  # source frame numbers
    # The server's own paths stay on the server: its model directory is named, not located.
    assert masks["model"]["id"] == "local:tiny" and masks["model"]["revision"].startswith("local-"), masks["model"]
    assert "/tmp/" not in served.text and "/models" not in served.text, masks["model"]
    r = httpx.post(f"{api['base']}/api/ai/queue", headers=A, json={"model": "sam-3-video", "prompt": "dog",
                                                                  "input_video": f"{inputs['base']}/clip.mp4",
                                                                  "start_frame": 500})
    assert r.status_code == 200  # known only once the video is read: the generation fails, saying why
    doc = wait(api, r.json()["generations"][0]["generation_id"])
    assert doc["status"] == "failed" and "start_frame" in doc["error_message"], doc


def test_exports_download_one_object_video_each(api, inputs):
    """The ``objects`` export is a folder: result_urls lists each object's video, the files route
    serves it (and the other exports with their own media types), and nothing else under it."""
    gen = enqueue(api, {"input_video": f"{inputs['base']}/clip.mp4", "prompt": "dog", "max_frames": 3,
                        "detection_threshold": 0.0, "outputs": ["rle", "objects", "mot"]})
    doc = wait(api, gen)
    assert doc["status"] == "succeeded", doc
    masks = httpx.get(doc["result_urls"]["masks"]).json()
    ids = sorted(o["id"] for o in masks["objects"])
    assert ids, "no object found: the listing below would hold on nothing"
    urls = doc["result_urls"]
    assert "objects" not in urls and sorted(n for n in urls if n.startswith("objects/")) == sorted(
        f"objects/{i}.mkv" for i in ids), urls
    assert httpx.get(urls[f"objects/{ids[0]}.mkv"]).content[:4] == b"\x1aE\xdf\xa3"  # Matroska
    base = f"{api['base']}/api/ai/queue/{gen}/files"
    r = httpx.get(f"{base}/objects/{ids[0]}.mkv", headers=A)
    assert r.status_code == 200 and r.headers["content-type"] == "video/x-matroska" and r.content[:4] == b"\x1aE\xdf\xa3"
    r = httpx.get(f"{base}/mot", headers=A)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain") and r.text.startswith("1,")
    for bad in ("objects", "objects/x.mkv", "objects/1.json", "objects/..%2Fmasks.json"):
        r = httpx.get(f"{base}/{bad}", headers=A)
        assert r.status_code == 404, (bad, r.status_code, r.text)
    assert httpx.get(f"{base}/objects/{ids[0]}.mkv", headers=B).status_code == 404  # another key's generation


def test_uploads_are_inputs_for_their_key_only(api, inputs, media_dir):
    base = api["base"]
    clip = media.clip(media_dir, FRAMES + 2)
    r = httpx.post(f"{base}/api/ai/uploads", headers=A, files={"file": ("my clip.mp4", clip.read_bytes(), "video/mp4")})
    assert r.status_code == 200, r.text
    up = r.json()
    assert up["input_video"] == f"upload://{up['upload_id']}" and up["bytes"] == clip.stat().st_size
    doc = wait(api, enqueue(api, {"input_video": up["input_video"], "prompt": "dog", "max_frames": 3}))
    assert doc["status"] == "succeeded", doc
    assert doc["input_video"] == up["input_video"]  # the caller's words, not our storage location
    r = httpx.post(f"{base}/api/ai/queue", headers=B, json={"model": "sam-3-video", "input_video": up["input_video"],
                                                           "prompt": "dog"})
    assert r.status_code == 422 and r.json()["error"]["field"] == "input_video"  # another key's upload
    r = httpx.post(f"{base}/api/ai/queue", headers=A, json={"model": "sam-3-video", "prompt": "dog",
                                                           "input_video": "upload://" + "0" * 32})
    assert r.status_code == 422 and "no upload" in r.json()["error"]["message"]
    r = httpx.post(f"{base}/api/ai/uploads", headers=A, files={"file": ("empty.mp4", b"", "video/mp4")})
    assert r.status_code == 422 and r.json()["error"]["field"] == "file"
    assert httpx.post(f"{base}/api/ai/uploads", files={"file": ("x.mp4", b"x")}).status_code == 401


def test_upload_size_limit(api, tmp_path):
    server, base = start_api({**api["env"], "SAM3V_API_UPLOAD_MAX_BYTES": "100000"}, tmp_path / "api.log")
    try:
        for size in (150_000, 400_000):  # caught while stored; refused by the body limit before parsing
            r = httpx.post(f"{base}/api/ai/uploads", headers=A, files={"file": ("big.mp4", b"\0" * size, "video/mp4")})
            assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text
        r = httpx.post(f"{base}/api/ai/queue", headers=A, json={"model": "sam-3-video", "prompt": "x" * 1_100_000,
                                                               "input_video": "https://example.com/x.mp4"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large", r.text  # JSON bodies: 1 MiB
        r = httpx.post(f"{base}/api/ai/uploads", headers=A, files={"file": ("ok.mp4", b"\0" * 90_000, "video/mp4")})
        assert r.status_code == 200 and r.json()["bytes"] == 90_000, r.text
    finally:
        stop_process(server)


def test_uploads_expire_and_leave_storage(api, s3, media_dir, tmp_path):  # noqa: F811
    client, _ = s3
    server, base = start_api({**api["env"], "SAM3V_API_UPLOAD_TTL": "10", "SAM3V_API_UPLOAD_SWEEP": "0.5"},
                             tmp_path / "api.log")

    def stored(upload_id: str) -> list[str]:
        listed = client.list_objects_v2(Bucket=BUCKET, Prefix=f"results/uploads/{upload_id}/")
        return [o["Key"] for o in listed.get("Contents", [])]

    try:
        clip = media.clip(media_dir, FRAMES + 2)
        up = httpx.post(f"{base}/api/ai/uploads", headers=A, files={"file": ("c.mp4", clip.read_bytes(), "video/mp4")}).json()
        assert stored(up["upload_id"]) == [f"results/uploads/{up['upload_id']}/c.mp4"]
        # Fails after reading the upload (start_frame past the end): a retry has to read it again.
        gen_id = enqueue({"base": base}, {"input_video": up["input_video"], "prompt": "dog", "start_frame": 10_000})
        first = wait({"base": base}, gen_id)
        assert first["status"] == "failed" and "start_frame" in first["error_message"], first
        end = time.monotonic() + 30
        while stored(up["upload_id"]) and time.monotonic() < end:
            time.sleep(0.5)
        assert not stored(up["upload_id"]), "the sweeper deleted the expired upload"
        assert time.time() >= up["expires_at"]
        r = httpx.post(f"{base}/api/ai/queue", headers=A, json={"model": "sam-3-video", "prompt": "dog",
                                                               "input_video": up["input_video"]})
        assert r.status_code == 422 and "no upload" in r.json()["error"]["message"]
        # A generation that named it before, retried now: fails saying why, not with an internal error.
        assert httpx.post(f"{base}/api/ai/queue/{gen_id}/retry", headers=A).status_code == 200
        doc = wait({"base": base}, gen_id)
        assert doc["status"] == "failed" and doc["error_message"].endswith(
            f"uploads/{up['upload_id']}/c.mp4: no such key"), doc
    finally:
        stop_process(server)


def test_s3_inputs_only_from_allowed_buckets(api, s3, media_dir):  # noqa: F811
    client, _ = s3
    clip = media.clip(media_dir, FRAMES + 2)
    client.upload_file(str(clip), BUCKET, "inputs/api-clip.mp4")
    doc = wait(api, enqueue(api, {"input_video": f"s3://{BUCKET}/inputs/api-clip.mp4", "prompt": "dog", "max_frames": 3}))
    assert doc["status"] == "succeeded", doc
    for refused in (f"s3://{BUCKET}/results/{doc['generation_id']}/video/overlay.mp4",  # someone's results
                    f"s3://{BUCKET}/inputs-other/x.mp4", "s3://another-bucket/inputs/x.mp4"):
        r = httpx.post(f"{api['base']}/api/ai/queue", headers=A,
                       json={"model": "sam-3-video", "input_video": refused, "prompt": "dog"})
        assert r.status_code == 422 and "SAM3V_API_S3_BUCKETS" in r.json()["error"]["message"], (refused, r.text)


def _verify(hook: dict, secret: str) -> dict:
    """What a receiver does: the README's verification example, run as written."""
    return readme_verify()(secret, hook["headers"], hook["body"], set())


def test_webhooks_signed_retried_and_recorded(api, inputs):
    base, hooks = api["base"], inputs["hooks"]
    secret_a = httpx.get(f"{base}/api/ai/webhooks/secret", headers=A).json()["secret"]
    secret_b = httpx.get(f"{base}/api/ai/webhooks/secret", headers=B).json()["secret"]
    assert secret_a != secret_b and secret_a.startswith("whsec_")
    ok = enqueue(api, {"input_video": f"{inputs['base']}/clip.mp4", "prompt": "dog", "max_frames": 3,
                       "webhook_url": f"{inputs['base']}/hook-flaky"})
    bad = enqueue(api, {"input_video": f"{inputs['base']}/corrupt.mp4", "prompt": "dog",
                        "webhook_url": f"{inputs['base']}/hook-fails"})
    assert wait(api, ok)["status"] == "succeeded" and wait(api, bad)["status"] == "failed"
    end = time.monotonic() + 30
    while time.monotonic() < end and not (
            httpx.get(f"{base}/api/ai/queue/{ok}", headers=A).json()["webhook"]["status"] != "pending"
            and httpx.get(f"{base}/api/ai/queue/{bad}", headers=A).json()["webhook"]["status"] != "pending"):
        time.sleep(0.2)
    got = {gen: [h for h in hooks if json.loads(h["body"]).get("generation_id") == gen] for gen in (ok, bad)}
    # The flaky receiver: a 500, then the same delivery again (same id), accepted; recorded on the row.
    assert len(got[ok]) == 2 and len({h["headers"]["X-Sam3v-Delivery"] for h in got[ok]}) == 1
    body = _verify(got[ok][1], secret_a)
    assert body["event"] == "media_generation_completed" and body["status"] == "succeeded"
    assert got[ok][1]["headers"]["X-Sam3v-Event"] == "media_generation_completed"
    assert httpx.get(body["result_url"]).content[4:8] == b"ftyp"
    with pytest.raises(ValueError, match="bad signature"):
        _verify(got[ok][1], secret_b)  # another key's secret does not verify it
    hook = httpx.get(f"{base}/api/ai/queue/{ok}", headers=A).json()["webhook"]
    assert hook == {"url": f"{inputs['base']}/hook-flaky", "status": "delivered", "attempts": 2, "error": None}
    # Always 500: SAM3V_API_WEBHOOK_ATTEMPTS (3) tries, then given up with the reason.
    assert len(got[bad]) == 3
    body = _verify(got[bad][0], secret_a)
    assert body["event"] == "media_generation_failed" and "not a video" in body["error_message"]
    hook = httpx.get(f"{base}/api/ai/queue/{bad}", headers=A).json()["webhook"]
    assert hook["status"] == "failed" and hook["attempts"] == 3 and hook["error"] == "HTTP 500"
    # The address rules of inputs, at enqueue.
    for url in ("http://169.254.169.254/hook", f"http://127.0.0.1:{inputs['other_port']}/hook", "ftp://example.com/x",
                "https://example.com/" + "a" * 5000):  # a URL no receiver has, stored and read on every delivery
        r = httpx.post(f"{base}/api/ai/queue", headers=A, json={"model": "sam-3-video", "prompt": "dog",
                                                               "input_video": f"{inputs['base']}/clip.mp4",
                                                               "webhook_url": url})
        assert r.status_code == 422 and r.json()["error"]["field"] == "webhook_url", (url, r.text)


def _hosted_script(api, inputs, script: str) -> subprocess.CompletedProcess:
    """The documentation's script with the stray spaces removed and our base URL and input."""
    script = script.replace("https://hub.oxen.ai", api["base"]).replace(
        "https://hub.oxen.ai/api/repos/ox/Oxen-AI-Assets/file/main/images/winter_summer_ox.mp4", "")
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=240,
                          env={"PATH": "/usr/bin:/bin", "OXEN_API_KEY": KEY_A, "INPUT": f"{inputs['base']}/clip.mp4"})


POLL_SCRIPT = r"""
set -e
# Enqueue, capture the generation id.
GEN_ID=$( curl -s -X POST https://hub.oxen.ai/api/ai/queue \
-H "Content-Type: application/json" \
-H "Authorization: Bearer $OXEN_API_KEY " \
-d '{
"model": "sam-3-video",
"input_video": "'"$INPUT"'",
"prompt": "the ox horns"
}' | jq -r '.generations[0].generation_id' )
# Poll until the generation reaches a terminal status.
while true ; do
STATUS=$( curl -s -H "Authorization: Bearer $OXEN_API_KEY " \
"https://hub.oxen.ai/api/ai/queue/$GEN_ID" | jq -r '.status' )
echo "Status: $STATUS "
case $STATUS in succeeded | failed | cancelled ) break ;; esac
sleep 5
done
# Print the result.
curl -s -H "Authorization: Bearer $OXEN_API_KEY " \
"https://hub.oxen.ai/api/ai/queue/$GEN_ID" | jq .
"""

SSE_SCRIPT = r"""
set -e
# Enqueue, capture the generation id.
GEN_ID=$( curl -s -X POST https://hub.oxen.ai/api/ai/queue \
-H "Content-Type: application/json" \
-H "Authorization: Bearer $OXEN_API_KEY " \
-d '{
"model": "sam-3-video",
"input_video": "'"$INPUT"'",
"prompt": "the ox horns",
"apply_mask": true
}' | jq -r '.generations[0].generation_id' )
# Stream the SSE channel, grab the data line that follows a
# media_generation_completed event for our id, and pretty-print it.
timeout 200 curl -sN -H "Authorization: Bearer $OXEN_API_KEY " https://hub.oxen.ai/api/events \
| awk -v id="$GEN_ID" '
/^event: media_generation_completed$/ { expect=1; next }
/^data: / && expect {
payload = substr($0, 7)
if (index(payload, "\"generation_id\":\"" id "\"")) { print payload; exit }
expect = 0
}
' | jq .
"""


@pytest.mark.skipif(not all(shutil.which(t) for t in ("curl", "jq", "awk")), reason="needs curl, jq and awk")
def test_hosted_documentation_scripts(api, inputs):
    done = _hosted_script(api, inputs, POLL_SCRIPT)
    assert done.returncode == 0, done.stderr
    assert "Status: succeeded" in done.stdout
    result = json.loads(done.stdout[done.stdout.index("{"):])
    assert result["status"] == "succeeded" and httpx.get(result["result_url"]).content[4:8] == b"ftyp"
    done = _hosted_script(api, inputs, SSE_SCRIPT)
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    assert payload["status"] == "succeeded" and payload["result_url"].startswith("http")


def test_the_cli_has_the_api_command():
    from typer.testing import CliRunner

    from sam3v.cli import app

    r = CliRunner().invoke(app, ["api", "--help"])
    assert r.exit_code == 0 and "--port" in r.output


def test_api_worker_processes(api, env, tmp_path):  # noqa: F811
    """--workers N: N processes share the port and serve the same generations (state is in Redis);
    refused in embedded mode, where the pipeline runs inside the one API process."""
    gen_id = enqueue(api, {"input_video": f"s3://{BUCKET}/inputs/none.mp4", "prompt": "dog"})
    server, base = start_api(api["env"], tmp_path / "api.log", args=("--workers", "2"))
    try:
        children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) >= 2, children
        for _ in range(20):  # new connections each: the kernel spreads them over the processes
            r = httpx.get(f"{base}/api/ai/queue/{gen_id}", headers=A)
            assert r.status_code == 200 and r.json()["generation_id"] == gen_id
            assert httpx.get(f"{base}/api/ai/queue/{gen_id}", headers=B).status_code == 404
    finally:
        stop_process(server)
    clean = {k: v for k, v in env.items() if k not in ("SAM3V_BROKER_URL", "SAM3V_REDIS_URL")}
    r = subprocess.run([sys.executable, "-m", "sam3v.cli", "api", "--workers", "2"], env=clean,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "--workers 1" in r.stderr and "embedded" in r.stderr, r.stderr


def test_a_cancelled_generation_retried_at_once_runs_one_chain(api, inputs):
    """Retry right after cancel: the cancelled attempt's queued and running tasks stop at their next
    step instead of running beside the new attempt, so no chunk is delivered twice and the
    generation completes once."""
    base = api["base"]
    gen_id = enqueue(api, {"input_video": f"{inputs['base']}/clip.mp4", "prompt": "dog", "max_frames": FRAMES + 2,
                           "chunk_frames": 2})
    end = time.monotonic() + 60
    while httpx.get(f"{base}/api/ai/queue/{gen_id}", headers=A).json()["status"] == "queued" and time.monotonic() < end:
        time.sleep(0.05)
    assert httpx.delete(f"{base}/api/ai/queue/{gen_id}", headers=A).json()["status"] == "cancelled"
    assert httpx.post(f"{base}/api/ai/queue/{gen_id}/retry", headers=A).status_code == 200
    doc = wait(api, gen_id)
    assert doc["status"] == "succeeded", doc
    time.sleep(3)  # whatever the cancelled attempt still had queued has had its turn
    r = redis.Redis.from_url(api["env"]["SAM3V_BROKER_URL"])
    deliveries = {k.decode(): int(v) for k, v in r.hgetall(f"sam3v:deliveries:{gen_id}:video").items()}
    assert sorted(deliveries) == ["0", "1", "2", "3"] and set(deliveries.values()) == {1}, deliveries
    kinds = [f[b"kind"].decode() for _, f in r.xrange("sam3v:events") if f[b"job"].decode() == gen_id]
    assert kinds.count("video_succeeded") == 1 and kinds.count("video_cancelled") == 1, kinds


def test_generations_and_events_outlive_an_api_process(api, inputs, tmp_path):
    """Rows and events live in Redis: an API process killed (-9) while its generation runs loses
    nothing; another process reports the result, and an SSE client resuming from the last event id
    it had seen gets the completion."""
    r = redis.Redis.from_url(api["env"]["SAM3V_BROKER_URL"])
    seen = r.xinfo_stream("sam3v:events")["last-generated-id"].decode()
    server, base = start_api(api["env"], tmp_path / "api1.log")
    gen_id = enqueue({"base": base}, {"input_video": f"{inputs['base']}/clip.mp4", "prompt": "dog", "max_frames": 3})
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(10)
    server, base = start_api(api["env"], tmp_path / "api2.log")
    try:
        doc = wait({"base": base}, gen_id)
        assert doc["status"] == "succeeded" and doc["result_url"], doc
        resumed = SSEReader({"base": base}, A, last_event_id=seen)
        try:
            assert resumed.until(lambda ev: any(e[2]["generation_id"] == gen_id for e in ev), 15), resumed.events
            assert [e[0] for e in resumed.events if e[2]["generation_id"] == gen_id] == ["media_generation_completed"]
        finally:
            resumed.close()
    finally:
        stop_process(server)


def test_embedded_mode_smoke(env, inputs, tmp_path):  # noqa: F811
    """No broker, no Redis, local storage: the API runs the worker in-process; results come from the
    authenticated download route; SSE works by polling the in-process Redis."""
    clean = {k: v for k, v in env.items() if k not in ("SAM3V_BROKER_URL", "SAM3V_REDIS_URL")}
    api_env = {**clean, "SAM3V_STORAGE_URL": str(tmp_path / "data"), "SAM3V_API_KEYS": KEY_A,
               "SAM3V_URL_ALLOWLIST": f"127.0.0.1:{inputs['port']}", "SAM3V_API_SSE_PING": "1"}
    log = tmp_path / "api.log"
    server, base = start_api(api_env, log, timeout=120)
    api = {"base": base}
    try:
        reader = SSEReader(api, A)
        try:
            gen_id = enqueue(api, {"input_video": f"{inputs['base']}/clip.mp4", "prompt": "dog", "max_frames": 3,
                                   "webhook_url": f"{inputs['base']}/hook-embedded"})
            doc = wait(api, gen_id)
            assert doc["status"] == "succeeded", (doc, log.read_text())
            end = time.monotonic() + 20
            while time.monotonic() < end and not any(h["path"] == "/hook-embedded" for h in inputs["hooks"]):
                time.sleep(0.2)
            hook = next(json.loads(h["body"]) for h in inputs["hooks"] if h["path"] == "/hook-embedded")
            assert hook["generation_id"] == gen_id and hook["result_url"] == doc["result_url"]
            assert doc["result_url"] == f"{api['base']}/api/ai/queue/{gen_id}/files/overlay"
            assert httpx.get(doc["result_url"]).status_code == 401
            assert httpx.get(doc["result_url"], headers=A).content[4:8] == b"ftyp"
            # The generation's report: written by the worker that ended it, just after its state.
            report_url = f"{api['base']}/api/ai/queue/{gen_id}/files/report.html"
            assert httpx.get(report_url).status_code == 401
            end = time.monotonic() + 20
            while (report := httpx.get(report_url, headers=A)).status_code == 404 and time.monotonic() < end:
                time.sleep(0.2)
            assert report.status_code == 200, report.text
            assert report.headers["content-type"].startswith("text/html")
            assert report.headers["content-security-policy"].startswith("default-src 'none'")
            assert '<tr data-state="succeeded"' in report.text and "data:image/webp;base64," in report.text
            next(p for p in (tmp_path / "data").rglob("overlay.mp4") if gen_id in str(p)).unlink()
            gone = httpx.get(doc["result_url"], headers=A)
            assert gone.status_code == 404 and "no longer in storage" in gone.json()["error"]["message"], gone.text
            assert reader.until(lambda ev: any(e[2]["generation_id"] == gen_id for e in ev), 10), reader.events
        finally:
            reader.close()
    finally:
        stop_process(server)
