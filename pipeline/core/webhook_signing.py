r"""Signed HTTP notifications, shared by the API's per-generation webhooks (sam3v/api/webhooks.py)
and a job's completion hook (``sam3v submit --on-done URL``, sent by workers/jobs/job_hook.py).

``X-Sam3v-Signature: t=<unix time>,v2=<hex HMAC-SHA256 of "<t>\n<event>\n<delivery>\n<raw body>">``:
the timestamp, the ``X-Sam3v-Event`` and ``X-Sam3v-Delivery`` headers and the body are all signed, so a
captured delivery resent under a fresh delivery id (to pass a receiver's de-duplication) or as
another event fails verification. Header values hold no newline, so the fields cannot shift. (v1
signed only "<t>.<body>".) The secrets derive
from one server secret (SAM3V_API_WEBHOOK_SECRET, else one made once and kept in Redis), one per
API key and one for job hooks, so a receiver of one cannot sign as another.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SECRET_KEY = "sam3v:api:webhook-secret"
# The owner name job hooks' secret derives from: not a key digest (64 hex digits), so no API key
# shares it.
JOB_HOOKS = "job-hooks"


def server_secret(r, configured: str | None) -> str:
    """SAM3V_API_WEBHOOK_SECRET, else one made once and shared by every process through Redis."""
    if configured:
        return configured
    r.set(SECRET_KEY, secrets.token_hex(32), nx=True)
    value = r.get(SECRET_KEY)
    return value.decode() if isinstance(value, bytes) else value


def key_secret(server: str, owner: str) -> str:
    """The signing secret of one owner (an API key's digest, or JOB_HOOKS)."""
    return "whsec_" + hmac.new(server.encode(), owner.encode(), hashlib.sha256).hexdigest()


def signed_payload(timestamp: int, event: str, delivery: str, body: bytes) -> bytes:
    """What the HMAC covers. Receivers rebuild it from the headers they got and the raw body."""
    if any("\n" in part or "\r" in part for part in (event, delivery)):
        raise ValueError("an event name or delivery id holds a line break")
    return f"{timestamp}\n{event}\n{delivery}\n".encode() + body


def signature(secret: str, timestamp: int, event: str, delivery: str, body: bytes) -> str:
    payload = signed_payload(timestamp, event, delivery, body)
    return f"t={timestamp},v2={hmac.new(secret.encode(), payload, hashlib.sha256).hexdigest()}"


def signed_headers(secret: str, event: str, delivery: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """Headers of one attempt: ``delivery`` is the same on every attempt (receivers drop repeats)."""
    stamp = int(time.time() if now is None else now)
    return {"Content-Type": "application/json", "User-Agent": "sam3v-webhooks", "X-Sam3v-Event": event,
            "X-Sam3v-Delivery": delivery, "X-Sam3v-Signature": signature(secret, stamp, event, delivery, body)}
