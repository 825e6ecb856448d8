"""Webhook hand-off between two API processes on one real redis-server: the process holding a
webhook's event is killed -9 while the receiver is down, and the other live process delivers it,
exactly once, when the receiver comes back (sam3v/api/webhooks.py: one consumer group; an event a
dead process never acknowledged is claimed by a live one after ``claim_idle_ms``)."""

from __future__ import annotations

import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
import redis

from pipeline.core.status import EVENTS
from sam3v.api.webhooks import GROUP, claim_idle_ms
from tests.fault_env import wait_for
from tests.services import start_api, start_worker, stop_process
from tests.test_pipeline import BUCKET, clips, env, redis_server, s3  # noqa: F401  (module fixtures)

KEY = "handoff-key"
H = {"Authorization": f"Bearer {KEY}"}
ATTEMPTS, BACKOFF = 10, 0.2  # the holder is still retrying (pauses 0.2 s, 0.4 s, ...) when it is killed
CLAIM_INTERVAL = 1  # the live process looks for abandoned events every second (default: a minute)


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 503 while down and 204 once up; it records
    every POST it gets (delivery id, event, the status it answered)."""

    def __init__(self):
        self.up = False
        self.posts: list[dict] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    status = 204 if receiver.up else 503
                    receiver.posts.append({"delivery": self.headers.get("X-Sam3v-Delivery"), "status": status,
                                           "event": json.loads(body)["event"]})
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        self.port = self.httpd.server_address[1]

    def received(self, status: int | None = None) -> list[dict]:
        with self.lock:
            return [p for p in self.posts if status is None or p["status"] == status]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def _pending(r: redis.Redis, eid: str) -> list[dict]:
    return r.xpending_range(EVENTS, GROUP, min=eid, max=eid, count=1)


def test_killed_api_process_hands_its_webhook_to_the_live_one(env, clips, redis_server, receiver, tmp_path):
    api_env = {**env, "SAM3V_API_KEYS": KEY, "SAM3V_API_S3_BUCKETS": f"{BUCKET}/inputs",
               "SAM3V_URL_ALLOWLIST": f"127.0.0.1:{receiver.port}",
               "SAM3V_API_WEBHOOK_ATTEMPTS": str(ATTEMPTS), "SAM3V_API_WEBHOOK_BACKOFF": str(BACKOFF),
               "SAM3V_API_WEBHOOK_CLAIM_INTERVAL": str(CLAIM_INTERVAL)}
    r = redis.Redis.from_url(redis_server.url)
    logs = {name: tmp_path / f"{name}.log" for name in ("worker", "api1", "api2")}

    def context() -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-2000:]}" for p in logs.values() if p.exists())

    worker = start_worker(api_env, "gpu,cpu,interactive-gpu,interactive-cpu", "handoff", logs["worker"])
    apis = dict([start_api(api_env, logs["api1"]), start_api(api_env, logs["api2"])])  # process -> base URL
    try:
        base = next(iter(apis.values()))
        sent = httpx.post(f"{base}/api/ai/queue", headers=H, timeout=30, json={
            "model": "sam-3-video", "input_video": f"s3://{BUCKET}/inputs/dog.mp4", "prompt": "dog", "max_frames": 3,
            "webhook_url": f"http://127.0.0.1:{receiver.port}/hook"})
        assert sent.status_code == 200, sent.text
        gen_id = sent.json()["generations"][0]["generation_id"]

        # The generation ends; its webhook fails against the receiver (down) and is retried.
        failed = wait_for(lambda: len(receiver.received(503)) >= 2 and receiver.received(503), 180,
                          lambda: f"no retried webhook: {receiver.posts}\n{context()}", poll=0.05)
        eid = failed[0]["delivery"]
        assert {p["delivery"] for p in failed} == {eid} and failed[0]["event"] == "media_generation_completed"

        # Kill -9 the process that holds the event (the group's pending entry names its consumer,
        # "<host>-<pid>"), mid-retry: it never acknowledges it.
        pending = _pending(r, eid)
        assert pending, f"event {eid} is not pending in the group"
        holder_name = pending[0]["consumer"].decode()
        holder = next((p for p in apis if holder_name.endswith(f"-{p.pid}")), None)
        assert holder is not None, f"{holder_name} is neither API process {[p.pid for p in apis]}"
        live = next(p for p in apis if p is not holder)
        stop_process(holder, signal.SIGKILL)
        tries_by_holder = len(receiver.received())
        assert tries_by_holder < ATTEMPTS, "the holder was still retrying when killed"

        # The receiver is back before the event can be claimed (the live process looks every
        # CLAIM_INTERVAL): the live process's first attempt is the one that meets it up.
        with receiver.lock:
            receiver.up = True
        assert len(receiver.received()) == tries_by_holder, "nobody tries the event while its holder is dead"

        # Stand in for the claim time (at least 15 min, not configurable: CLAIM_IDLE_MS): the entry
        # stays the dead consumer's, made as idle as if that time had passed. (Checked before: from
        # the xclaim on, the live process may take it at any moment.)
        assert _pending(r, eid)[0]["consumer"].decode() == holder_name
        idle_ms = claim_idle_ms(ATTEMPTS, BACKOFF) + 60_000
        claimed = r.xclaim(EVENTS, GROUP, holder_name, 0, [eid], idle=idle_ms, justid=True)
        assert [c.decode() for c in claimed] == [eid], claimed
        # The live process looks for abandoned events every CLAIM_INTERVAL.
        wait_for(lambda: receiver.received(204), 150, lambda: f"never delivered: {receiver.posts}\n{context()}", poll=0.1)

        # Done with: acknowledged, and the generation records the delivery.
        def doc() -> dict:
            return httpx.get(f"{apis[live]}/api/ai/queue/{gen_id}", headers=H, timeout=10).json()

        wait_for(lambda: not _pending(r, eid) and doc().get("webhook", {}).get("status") == "delivered", 30,
                 lambda: f"pending {_pending(r, eid)}, generation {doc()}\n{context()}", poll=0.1)
        webhook = doc()["webhook"]
        assert live.poll() is None and holder.poll() is not None
    finally:
        for p in apis:
            stop_process(p)
        stop_process(worker)

    delivered = receiver.received(204)
    assert [p["delivery"] for p in delivered] == [eid], f"delivered once, with the event's id: {receiver.posts}"
    assert delivered[0]["event"] == "media_generation_completed"
    assert len(receiver.received()) == tries_by_holder + 1, "no attempt after the delivery"
    assert webhook["attempts"] == 1, f"the live process's own first attempt delivered it: {webhook}"
