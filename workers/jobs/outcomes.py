"""What a worker records about a video's outcome, and when a task must not run at all.

A video ends once (``finish_video``); the transition that ends the job's last video writes the
job's ``results.jsonl``. A task of an earlier attempt (the video was retried or requeued since), of
a cancelled job or of a video already ended stops before it does anything, and what it writes is
fenced by its attempt (``StatusStore.update_video(fence=...)``).
"""

from __future__ import annotations

import logging
import time

from celery.exceptions import Ignore

from pipeline.core.heartbeats import Heartbeats
from pipeline.core.layout import JobKeys
from pipeline.core.report import write_report
from pipeline.core.results import result_rows, rows_jsonl
from pipeline.core.retention import expire_job
from pipeline.core.status import TERMINAL
from workers.jobs.context import Context
from workers.jobs.job_hook import send_job_hook
from workers.jobs.sources import drop_cached

log = logging.getLogger(__name__)


def finish_video(ctx: Context, job_id: str, video_id: str, attempt: int, **fields) -> None:
    fields.setdefault("finished", time.time())
    drop_cached(ctx.settings, job_id, video_id)
    if ctx.status.update_video(job_id, video_id, fence=attempt, **fields):
        write_results(ctx, job_id)
        expire_job(ctx.status.r, job_id, ctx.settings.job_retention)
    if ctx.status.video(job_id, video_id).get("status") in TERMINAL:
        Heartbeats(ctx.status.r).forget(job_id, video_id)


def fail_video(ctx: Context, job_id: str, video_id: str, attempt: int, message: str) -> None:
    log.warning("job %s video %s failed: %s", job_id, video_id, message)
    finish_video(ctx, job_id, video_id, attempt, status="failed", error=message)


def write_results(ctx: Context, job_id: str) -> None:
    """The job's results.jsonl: one line a video, written once, when the last video ends; and its
    report.html beside it (``pipeline.core.report``)."""
    doc = ctx.status.status_document(job_id)
    rows = result_rows(doc)
    results = ctx.storage.put_bytes(rows_jsonl(rows), JobKeys(job_id).results)
    # Before the job's results are recorded: whoever waits for them finds the report there too.
    try:
        write_report(ctx.storage, doc, rows)
    except Exception:  # a convenience beside results.jsonl: `sam3v report JOB` makes it again
        log.exception("job %s: report.html not written", job_id)
    ctx.status.record_results(job_id, results)
    doc["results"] = results
    ctx.status.event(job_id, "job_completed", {"status": doc["status"], "counts": doc["counts"]})
    spec = ctx.status.job_spec(job_id)
    if spec.get("on_done"):  # once: only the transition that ended the job gets here
        send_job_hook(job_id, spec["on_done"], doc, results, spec.get("lane") or "batch")


def attempt_of(entry: dict) -> int:
    return int(entry.get("attempt") or 0)


def _claimed(entry: dict, attempt: int) -> bool:
    """This attempt holds the claim to publish the video's outputs (``StatusStore.claim_publishing``)."""
    return entry.get("publishing") is not None and int(entry["publishing"]) == attempt


def stop_if_not_wanted(ctx: Context, job_id: str, video_id: str, attempt: int) -> None:
    """Raise Ignore when this task's work is no longer wanted."""
    entry = ctx.status.video(job_id, video_id)
    if attempt_of(entry) != attempt:
        raise Ignore()  # a task of an earlier attempt: the video was retried since
    if entry.get("status") not in TERMINAL and _claimed(entry, attempt):
        return  # its finalize began publishing before any cancel: the video ends succeeded
    if ctx.status.is_cancelled(job_id) or entry.get("status") in TERMINAL:
        drop_cached(ctx.settings, job_id, video_id)  # cancelled or ended: nothing on this host reads it again
        raise Ignore()
