"""Cancel and retry a job so that its state stays true: a job that has ended is not cancelled, a
retry that would rerun nothing changes nothing, and a cancelled job is closed by a worker (its
``results.jsonl`` written, its ``work/`` removed) like a job whose last video ended."""

from __future__ import annotations

from dataclasses import dataclass, field

from celery import Celery

from pipeline.core.celery_app import CLOSE_CANCELLED, queue_for
from pipeline.core.errors import InputError
from pipeline.control.purge import purge_job
from pipeline.core.status import FINAL_JOB_STATES, StatusStore, _k

# Sets the cancelled flag unless the job has ended (its last video's transition wrote 'completed'):
# checked and set in one step, so a job that ends meanwhile is never marked cancelled after the fact.
_FLAG_CANCELLED = """
if redis.call('HEXISTS', KEYS[1], 'completed') == 1 then return 0 end
redis.call('HSET', KEYS[1], 'cancelled', 1)
return 1
"""


@dataclass(frozen=True)
class CancelOutcome:
    stopped: int  # videos that were queued or processing
    ended_as: str | None = None  # the job had already ended in this state: nothing was changed


def cancel_job(app: Celery, store: StatusStore, job_id: str) -> CancelOutcome:
    status = store.summary(job_id).status
    if status in FINAL_JOB_STATES:
        return CancelOutcome(0, status)
    if not store.r.eval(_FLAG_CANCELLED, 1, _k("job", job_id)):
        return CancelOutcome(0, store.summary(job_id).status)
    stopped = store.mark_cancelled(job_id)
    purge_job(app, store, job_id)  # its queued messages, in bounded batches (they would only drop themselves)
    lane = store.job_spec(job_id).get("lane", "batch")
    app.send_task(CLOSE_CANCELLED, args=[job_id], queue=queue_for("cpu", lane))
    return CancelOutcome(stopped)


@dataclass(frozen=True)
class RetryChoice:
    videos: list[str]  # what to run again
    refused: dict[str, str] = field(default_factory=dict)  # video -> why it cannot run again


def choose_retry(doc: dict, video_ids: list[str] | None, include_cancelled: bool) -> RetryChoice:
    """Which videos of a job (``status_document``) a retry runs again: its failed videos, and its
    cancelled ones with ``include_cancelled``; ``video_ids`` narrows that to these (each must
    qualify, or nothing runs). An id the job does not have is an input error."""
    states = {v["id"]: v["status"] for v in doc["videos"]}
    wanted = ("failed", "cancelled") if include_cancelled else ("failed",)
    if not video_ids:
        return RetryChoice([vid for vid, state in states.items() if state in wanted])
    unknown = [vid for vid in video_ids if vid not in states]
    if unknown:
        raise InputError(f"--video: job {doc['id']} has no video {', '.join(map(repr, unknown))}")
    refused = {}
    for vid in dict.fromkeys(video_ids):
        if states[vid] == "cancelled" and not include_cancelled:
            refused[vid] = "is cancelled: add --cancelled to run cancelled videos again"
        elif states[vid] not in wanted:
            refused[vid] = f"is {states[vid]}: only failed or cancelled videos run again"
    return RetryChoice([] if refused else list(dict.fromkeys(video_ids)), refused)
