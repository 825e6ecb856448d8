"""WebhookDispatcher scheduling, in process (fakeredis, a recorded post_json): a receiver that is
down waits for its retries without holding a delivery thread. The real-process webhook tests
(signatures, retries against an HTTP receiver, outcomes) are in tests/test_api.py."""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

import fakeredis

from sam3v.api import webhooks
from sam3v.api.service import gen_key
from sam3v.api.webhooks import WebhookDispatcher
from pipeline.core.settings import Settings
from pipeline.core.status import EVENTS


def _until(check, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if check():
            return True
        time.sleep(0.02)
    return False


def test_a_receiver_that_is_down_does_not_hold_up_the_others(monkeypatch):
    r = fakeredis.FakeRedis()
    calls = []

    def post_json(url, body, headers, allowlist, timeout):
        calls.append((time.monotonic(), url, headers["X-Sam3v-Delivery"], body))
        return 503 if "down" in url else 204

    monkeypatch.setattr(webhooks, "post_json", post_json)
    settings = Settings(api_webhook_attempts=3, api_webhook_backoff=1.0, api_webhook_secret="s")
    made = []

    def completion(job, meta, base_url, fields):
        made.append(job)
        return {"generation_id": job, "status": "failed", "error_message": "x"}

    dispatcher = WebhookDispatcher(SimpleNamespace(r=r, settings=settings, completion=completion), workers=1)
    dispatcher.start()
    try:
        for job, url in (("g-down", "http://down.example/hook"), ("g-up", "http://up.example/hook")):
            r.hset(gen_key(job), mapping={"owner": "o", "params": json.dumps({"webhook_url": url})})
        r.xadd(EVENTS, {"job": "g-down", "kind": "video_failed", "data": "{}", "time": time.time()})
        r.xadd(EVENTS, {"job": "g-up", "kind": "video_failed", "data": "{}", "time": time.time()})
        assert _until(lambda: r.hget(gen_key("g-down"), "webhook_status") == b"failed", 30), calls
        assert r.hget(gen_key("g-up"), "webhook_status") == b"delivered"
        # One delivery thread: the up receiver was served while the down one waited for its retry.
        assert [c[1] for c in calls] == ["http://down.example/hook", "http://up.example/hook"] + \
            ["http://down.example/hook"] * 2, calls
        down = [c for c in calls if "down" in c[1]]
        assert len(down) == 3 and int(r.hget(gen_key("g-down"), "webhook_attempts")) == 3
        assert len({c[2] for c in down}) == 1 and len({c[3] for c in down}) == 1, "same delivery id and body"
        gaps = [b[0] - a[0] for a, b in zip(down, down[1:])]
        assert gaps[0] >= 0.95 and gaps[1] >= 1.95, gaps  # backoff 1 s, then 2 s
        assert made.count("g-down") == 1, "the body is built once"
        assert r.xpending(EVENTS, webhooks.GROUP)["pending"] == 0, "both events acknowledged"
    finally:
        dispatcher.close()


def test_a_retrying_process_is_not_doubled_by_a_claim():
    # the claim waits out the longest pause between attempts, whatever the settings
    assert webhooks.claim_idle_ms(6, 2.0) == webhooks.CLAIM_IDLE_MS  # longest pause 32 s
    assert webhooks.claim_idle_ms(10, 2.0) == 2 * (512 + webhooks.TIMEOUT) * 1000  # longest pause 512 s
    assert webhooks.claim_idle_ms(2, 3600.0) > 3600 * 1000  # one pause of an hour
