"""Turn a manifest into a job: validate, record, enqueue one probe task per video, return.

The producer never probes or downloads videos itself, so a 10,000-line manifest is accepted in
seconds; each video's probe task plans its chunks and starts its chain.
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from pipeline.core.celery_app import PROBE, queue_for
from pipeline.core.errors import InputError
from pipeline.core.specs import DEFAULT_MAX_PROMPTS
from pipeline.control.manifest import manifest_digest, parse_manifest
from pipeline.core.retention import keep_job
from pipeline.core.status import StatusStore


@dataclass
class Submitted:
    job_id: str
    created: bool  # False: the idempotency key named an existing job
    accepted: int
    rejected: int


def submit_manifest(app: Celery, store: StatusStore, data: bytes, source_name: str, *, name: str = "",
                    default_prompt: str | None = None, idempotency_key: str | None = None,
                    strict: bool = False, allow_local: bool = False, lane: str = "batch",
                    max_prompts: int = DEFAULT_MAX_PROMPTS) -> Submitted:
    """``max_prompts``: the caller's ``settings.max_prompts``; a line with more prompts is rejected."""
    result = parse_manifest(data, source_name, default_prompt, allow_local, max_prompts)
    if strict and result.rejected:
        first = "; ".join(f"line {r.line}: {r.reason}" for r in result.rejected[:5])
        raise InputError(f"{source_name}: {len(result.rejected)} bad line(s), job refused (--strict): {first}")
    if not result.items:
        first = "; ".join(f"line {r.line}: {r.reason}" for r in result.rejected[:5])
        raise InputError(f"{source_name}: no valid video line{': ' + first if first else ''}")
    digest = manifest_digest(data + (default_prompt or "").encode())
    job_id = store.new_job_id()
    if idempotency_key:
        held_job, held_digest = store.claim_idempotency(idempotency_key, job_id, digest)
        if held_job != job_id:
            if held_digest != digest:
                raise InputError(f"--idempotency-key {idempotency_key!r} was used for job {held_job} with a "
                                 "different manifest; use a new key")
            return Submitted(held_job, False, 0, 0)
    items = [item.model_dump() for item in result.items]
    rejected = [r.model_dump() for r in result.rejected]
    # Workers read local paths only for a job that allowed them (workers/sources.py stage_source).
    spec = {"source": source_name, "default_prompt": default_prompt, "lane": lane, "allow_local": allow_local}
    store.create_job(job_id, name or source_name, spec, items, rejected)
    enqueue_videos(app, job_id, [i["id"] for i in items], lane)
    return Submitted(job_id, True, len(items), len(rejected))


def retry_videos(app: Celery, store: StatusStore, job_id: str, video_ids: list[str], lane: str = "batch") -> None:
    """Run these videos of a job again, from their first task, under a new attempt each."""
    for vid in video_ids:
        store.reset_deliveries(job_id, vid)
    keep_job(store.r, job_id)  # it runs again: its records must not expire under it
    enqueue_videos(app, job_id, video_ids, lane, attempts=store.reopen(job_id, video_ids))


def enqueue_videos(app: Celery, job_id: str, video_ids: list[str], lane: str = "batch",
                   attempts: dict[str, int] | None = None) -> None:
    """Send each video's first task; ``attempts`` (from ``StatusStore.reopen``) for a retry."""
    # One connection for the whole batch: per-message connections would cap the enqueue rate.
    with app.producer_or_acquire() as producer:
        for vid in video_ids:
            kwargs = {"attempt": attempts[vid]} if attempts else {}
            app.send_task(PROBE, args=[job_id, vid], kwargs=kwargs, producer=producer, queue=queue_for("cpu", lane))
