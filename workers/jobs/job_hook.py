"""A job's completion hook (``sam3v submit --on-done URL``): one signed POST when the job ends.

The worker whose transition ends the job (it writes results.jsonl, exactly once) sends the
``sam3v.job_hook`` task; the task POSTs the body it was given, signed like the API's webhooks
(``pipeline.core.webhook_signing``, the job-hooks secret: ``sam3v hook-secret``), and on a network
error or a non-2xx answer runs again after 2, 4, 8... s (SAM3V_API_WEBHOOK_BACKOFF,
SAM3V_API_WEBHOOK_ATTEMPTS tries in all). Every attempt carries the same body and delivery id. The
URL follows the rules of URL inputs (SAM3V_URL_ALLOWLIST for a receiver on a private address). The
outcome is kept on the job's record (its ``hook`` field: url, status, attempts, error).
"""

from __future__ import annotations

import json
import logging

from celery import current_app, shared_task

from pipeline.core.celery_app import queue_for
from pipeline.core.errors import InputError
from pipeline.core.urls import post_json
from pipeline.core.webhook_signing import (
    JOB_HOOKS,
    key_secret,
    server_secret,
    signed_headers,
)
from workers.jobs.context import context

JOB_HOOK = "sam3v.job_hook"
EVENT = "job_completed"
TIMEOUT = 10.0

log = logging.getLogger(__name__)


def hook_body(doc: dict, results: str) -> bytes:
    """What the receiver gets: the job's outcome and where its results.jsonl is."""
    return json.dumps({"event": EVENT, "job": doc["id"], "name": doc.get("name", ""), "status": doc["status"],
                       "total": doc["total"], "counts": doc["counts"], "rejected": len(doc["rejected"]),
                       "results": results}, separators=(",", ":")).encode()


def send_job_hook(job_id: str, url: str, doc: dict, results: str, lane: str = "batch") -> None:
    """Queue the hook of a job that just ended (a cpu task: no GPU worker is held by a slow receiver)."""
    delivery = f"{job_id}:{doc.get('updated') or ''}"
    current_app.send_task(JOB_HOOK, args=[job_id, url, hook_body(doc, results).decode(), delivery],
                          queue=queue_for("cpu", lane))


@shared_task(name=JOB_HOOK, bind=True, acks_late=True)
def job_hook(self, job_id: str, url: str, body: str, delivery: str) -> None:
    ctx = context()
    settings = ctx.settings
    secret = key_secret(server_secret(ctx.status.r, settings.api_webhook_secret), JOB_HOOKS)
    data = body.encode()
    try:
        status = post_json(url, data, signed_headers(secret, EVENT, delivery, data), settings.url_allowlist, TIMEOUT)
        error = None if 200 <= status < 300 else f"HTTP {status}"
    except InputError as err:
        error = str(err)
    attempts = self.request.retries + 1
    if error is not None and attempts < settings.api_webhook_attempts:
        ctx.status.set_job_fields(job_id, hook=json.dumps({"url": url, "status": "pending", "attempts": attempts,
                                                           "error": error}))
        raise self.retry(countdown=settings.api_webhook_backoff * 2 ** (attempts - 1), max_retries=None)
    ctx.status.set_job_fields(job_id, hook=json.dumps({"url": url, "status": "failed" if error else "delivered",
                                                       "attempts": attempts, "error": error}))
    if error:
        log.warning("on-done hook of job %s to %s given up after %d attempts: %s", job_id, url, attempts, error)
