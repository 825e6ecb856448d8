"""Closing a cancelled job like one that ended: its ``results.jsonl`` (every video's outcome), no
``work/`` left in storage (unless ``SAM3V_KEEP_CHUNKS``), its Redis records set to expire.

`sam3v cancel` marks the videos cancelled in Redis and sends ``sam3v.close_cancelled`` to a worker,
which writes with the workers' storage settings. A chunk running at that moment stops at its next
frame and may publish an encoded part before it notices: it removes its video's ``work/`` again
when it stops (``drop_cancelled_work``), so whichever comes last leaves nothing behind.
"""

from __future__ import annotations

import logging

from pipeline.core.layout import VideoKeys
from pipeline.core.retention import expire_job
from workers.jobs.context import Context
from workers.jobs.outcomes import attempt_of, write_results

log = logging.getLogger(__name__)


def _drop_work(ctx: Context, job_id: str, video_id: str, attempt: int, ended_as: str) -> bool:
    """Remove the video's ``work/`` when it ended ``ended_as`` at ``attempt``; a video retried since
    (a new attempt may be writing there) or ``SAM3V_KEEP_CHUNKS`` keeps it. True if removed."""
    if ctx.settings.keep_chunks:
        return False
    entry = ctx.status.video(job_id, video_id)
    if entry.get("status") != ended_as or attempt_of(entry) != attempt:
        return False
    ctx.storage.delete_prefix(VideoKeys(job_id, video_id).work_prefix)
    return True


def drop_cancelled_work(ctx: Context, job_id: str, video_id: str, attempt: int) -> bool:
    return _drop_work(ctx, job_id, video_id, attempt, "cancelled")


def drop_failed_work(ctx: Context, job_id: str, video_id: str, attempt: int) -> bool:
    """A video failed for its input (a damaged file): a retry cannot reuse its chunks' work."""
    return _drop_work(ctx, job_id, video_id, attempt, "failed")


def drop_finished_work(ctx: Context, job_id: str, video_id: str, attempt: int) -> bool:
    """A succeeded video's chunks are read by nobody again. A finalize killed between recording the
    success and this is redelivered and ends here (``workers.jobs.tasks._not_wanted``)."""
    return _drop_work(ctx, job_id, video_id, attempt, "succeeded")


def close_cancelled(ctx: Context, job_id: str) -> None:
    doc = ctx.status.status_document(job_id)
    if doc["status"] not in ("cancelled", "cancelling"):
        log.info("job %s is %s, not cancelled (retried since?): left as it is", job_id, doc["status"])
        return
    removed = sum(drop_cancelled_work(ctx, job_id, v["id"], attempt_of(v)) for v in doc["videos"]
                  if v["status"] == "cancelled")
    if doc["status"] == "cancelling":
        # A video whose finalize was publishing when the cancel came ends succeeded; its transition
        # ends the job and writes results.jsonl.
        log.info("job %s: cancelled; waiting for a video that was publishing its outputs", job_id)
        return
    write_results(ctx, job_id)
    expire_job(ctx.status.r, job_id, ctx.settings.job_retention)
    log.info("job %s closed as cancelled: results.jsonl written, work/ of %d video(s) removed", job_id, removed)
