"""Webhook signatures cover the timestamp, the event, the delivery id and the body: the README's
receiver example (run as written) accepts a delivery once and rejects a replay under a fresh
delivery id, as another event, stale or with another key's secret."""

from __future__ import annotations

import json
import time

import pytest

from pipeline.core.webhook_signing import signed_headers
from tests.webhook_receiver import readme_verify

SECRET = "whsec_test"
BODY = json.dumps({"event": "job_completed", "job": "j1", "status": "succeeded"}).encode()


@pytest.fixture(scope="module")
def verify():
    return readme_verify()


def test_a_delivery_verifies_once(verify):
    headers = signed_headers(SECRET, "job_completed", "j1:1700000000.5", BODY)
    seen: set[str] = set()
    assert verify(SECRET, headers, BODY, seen)["job"] == "j1"
    with pytest.raises(ValueError, match="already handled"):
        verify(SECRET, headers, BODY, seen)


def test_a_replay_under_a_new_delivery_id_is_rejected(verify):
    headers = signed_headers(SECRET, "job_completed", "j1:1700000000.5", BODY)
    seen: set[str] = set()
    verify(SECRET, headers, BODY, seen)
    replay = {**headers, "X-Sam3v-Delivery": "j1:1700000099.0"}
    with pytest.raises(ValueError, match="bad signature"):
        verify(SECRET, replay, BODY, seen)


@pytest.mark.parametrize("change", ["event", "body", "secret", "time"])
def test_anything_else_changed_is_rejected(verify, change):
    headers = signed_headers(SECRET, "media_generation_completed", "1700000000000-0", BODY)
    body, secret = BODY, SECRET
    if change == "event":
        headers = {**headers, "X-Sam3v-Event": "media_generation_failed"}
    elif change == "body":
        body = BODY.replace(b"succeeded", b"failed")
    elif change == "secret":
        secret = "whsec_other"
    else:  # a stale delivery, signed in its time
        headers = signed_headers(SECRET, "media_generation_completed", "1700000000000-0", BODY, now=time.time() - 900)
    with pytest.raises(ValueError, match="too old" if change == "time" else "bad signature"):
        verify(secret, headers, body, set())


def test_a_line_break_in_a_signed_header_is_refused():
    with pytest.raises(ValueError, match="line break"):
        signed_headers(SECRET, "job_completed", "j1\nX-Evil: 1", BODY)
