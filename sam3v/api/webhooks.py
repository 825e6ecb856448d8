"""Webhooks: a generation's ``webhook_url`` gets a POST when the generation ends (succeeded,
failed or cancelled), and again after each retry ends.

Body: the SSE event's ``data:`` JSON plus ``"event"``. Headers: ``X-Sam3v-Event`` (the event name),
``X-Sam3v-Delivery`` (the event id: the same on every attempt, so a receiver can drop repeats) and
``X-Sam3v-Signature`` (``pipeline.core.webhook_signing``: the time, event, delivery id and body are
signed), keyed with the caller's webhook secret (``GET /api/ai/webhooks/secret``). A receiver
recomputes the HMAC, compares in constant time, rejects an old ``t`` and a delivery id seen before
(README: verifying a webhook).

Delivery: every API process reads the events stream in one Redis consumer group, so each event
goes to one process. A delivery that fails (network error, any non-2xx status) is tried again
after doubling pauses (SAM3V_API_WEBHOOK_BACKOFF, SAM3V_API_WEBHOOK_ATTEMPTS in all); the event
is acknowledged once delivered or given up, and the outcome is kept on the generation (its GET
shows ``webhook``). Events a process took and never acknowledged (it died) are claimed by a live
one after ``claim_idle_ms`` (each failed attempt renews the claim). The URL follows the rules of
URL inputs: checked when queued and again at every attempt, sent to the checked address;
redirects are not followed.
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis

from sam3v.api.service import EVENT_NAMES, Generations, gen_key
from pipeline.core.errors import InputError
from pipeline.core.status import EVENTS, _s
from pipeline.core.urls import post_json
# The signing lives in the core, shared with job hooks; imported here under the names callers use.
from pipeline.core.webhook_signing import SECRET_KEY, key_secret, server_secret, signature, signed_headers  # noqa: F401

log = logging.getLogger(__name__)
GROUP = "sam3v-webhooks"
CLAIM_IDLE_MS = 15 * 60 * 1000
TIMEOUT = 10.0


def claim_idle_ms(attempts: int, backoff: float) -> int:
    """How long an event may sit unacknowledged before a live process takes it over: longer than
    the longest pause between two attempts (each attempt renews the claim), so a process that is
    still retrying is never doubled."""
    longest_pause = backoff * 2 ** max(attempts - 2, 0)
    return max(CLAIM_IDLE_MS, int(2 * (longest_pause + TIMEOUT) * 1000))


@dataclass
class Delivery:
    """One webhook on its way: the same body and delivery id on every attempt."""
    eid: str
    job: str
    kind: str
    url: str
    meta: dict
    fields: dict
    attempts: int = 0
    event: str = ""
    body: bytes = b""


class WebhookDispatcher:
    """One reader thread on the consumer group; attempts on a small pool. A failed attempt waits
    for its next one in a heap the reader drains, not in a pool thread: one receiver that is down
    does not hold up everyone else's webhooks."""

    def __init__(self, gens: Generations, workers: int = 8):
        self.g = gens
        self.r = gens.r
        self.settings = gens.settings
        self.consumer = f"{socket.gethostname()}-{os.getpid()}"
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="webhook")
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="webhook-reader", daemon=True)
        self.waiting: list[tuple[float, int, Delivery]] = []  # (due, tie-break, delivery), a heap
        self.waiting_lock = threading.Lock()
        self.order = itertools.count()
        self.claim_idle_ms = claim_idle_ms(self.settings.api_webhook_attempts, self.settings.api_webhook_backoff)

    def start(self) -> None:
        try:
            self.r.xgroup_create(EVENTS, GROUP, id="$", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise
        self.secret = server_secret(self.r, self.settings.api_webhook_secret)
        self.thread.start()

    def close(self) -> None:
        # Deliveries still waiting stay unacknowledged: another process claims them later.
        self.stop.set()
        self.thread.join(5)
        self.pool.shutdown(wait=False, cancel_futures=True)

    def _run(self) -> None:
        next_claim = 0.0
        while not self.stop.is_set():
            try:
                self._submit_due()
                entries = []
                if time.monotonic() >= next_claim:  # a dead process's unacknowledged events
                    next_claim = time.monotonic() + self.settings.api_webhook_claim_interval
                    entries += self.r.xautoclaim(EVENTS, GROUP, self.consumer, self.claim_idle_ms, "0-0",
                                                     count=100)[1]
                asked = time.monotonic()
                for _stream, items in self.r.xreadgroup(GROUP, self.consumer, {EVENTS: ">"}, count=100,
                                                        block=self._block_ms()) or []:
                    entries += items
                if not entries and time.monotonic() - asked < 0.1:
                    self.stop.wait(0.2)  # the embedded in-process Redis answers at once instead of blocking
                handled = [_s(eid) for eid, fields in entries
                           if self._take(_s(eid), {_s(k): _s(v) for k, v in fields.items()})]
                if handled:  # one round trip for a batch (most events are chunk progress, no webhook)
                    self.r.xack(EVENTS, GROUP, *handled)
            except redis.RedisError as err:  # Redis restarting: the group keeps our place
                log.warning("webhooks: %s; retrying", err)
                self.stop.wait(1)

    def _block_ms(self) -> int:
        """Wait for new events no longer than until the next retry is due (at most 1 s)."""
        with self.waiting_lock:
            due = self.waiting[0][0] - time.monotonic() if self.waiting else 1.0
        return max(1, min(1000, int(due * 1000)))

    def _submit_due(self) -> None:
        now = time.monotonic()
        with self.waiting_lock:
            while self.waiting and self.waiting[0][0] <= now:
                self.pool.submit(self._attempt, heapq.heappop(self.waiting)[2])

    def _take(self, eid: str, fields: dict) -> bool:
        """Starts a delivery if the event calls for one; True when the event is done with (to ack
        now), False when the delivery will acknowledge it."""
        kind, job = fields.get("kind"), fields.get("job")
        if not job or kind not in (*EVENT_NAMES, "video_queued"):
            return True
        meta = {_s(k): _s(v) for k, v in self.r.hgetall(gen_key(job)).items()}
        url = json.loads(meta["params"]).get("webhook_url") if meta.get("params") else None
        if not url:
            return True
        if kind == "video_queued":  # a retry: its end is news again
            self.r.hdel(gen_key(job), "webhook_event")
            return True
        # In stream order, before the pool: a repeated transition (a redelivered finalize) sends nothing.
        if not self.r.hsetnx(gen_key(job), "webhook_event", eid) and _s(self.r.hget(gen_key(job), "webhook_event")) != eid:
            return True
        self.pool.submit(self._attempt, Delivery(eid, job, kind, url, meta, fields))
        return False

    def _attempt(self, d: Delivery) -> None:
        try:
            if not d.body:  # built once: every attempt carries the same body (and presigned URLs)
                d.event = EVENT_NAMES[d.kind]
                completion = self.g.completion(d.job, d.meta, d.meta.get("base_url", ""), d.fields)
                d.body = json.dumps({"event": d.event, **completion}, separators=(",", ":")).encode()
            d.attempts += 1
            headers = signed_headers(key_secret(self.secret, d.meta["owner"]), d.event, d.eid, d.body)
            try:
                status = post_json(d.url, d.body, headers, self.settings.url_allowlist, TIMEOUT)
                error = None if 200 <= status < 300 else f"HTTP {status}"
            except InputError as err:
                error = str(err)
            if error is not None and d.attempts < self.settings.api_webhook_attempts:
                self.r.xclaim(EVENTS, GROUP, self.consumer, 0, [d.eid], justid=True)  # still ours: renew
                due = time.monotonic() + self.settings.api_webhook_backoff * 2 ** (d.attempts - 1)
                with self.waiting_lock:
                    heapq.heappush(self.waiting, (due, next(self.order), d))
                return
            self.r.hset(gen_key(d.job), mapping={"webhook_status": "failed" if error else "delivered",
                                                 "webhook_attempts": d.attempts, "webhook_error": error or ""})
            if error:
                log.warning("webhook for %s to %s given up after %d attempts: %s", d.job, d.url, d.attempts, error)
            self.r.xack(EVENTS, GROUP, d.eid)
        except Exception:  # never lose the pool thread; the event stays pending and is claimed again
            log.exception("webhook for %s", d.job)
