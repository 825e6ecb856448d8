"""What a task does when its step fails: fail the video, blame the worker, or run again later.

Redis or storage out of reach is nobody's fault: the task waits for Redis (it cannot even publish a
retry without it), then runs again later (``outage_retries``, backing off), and its delivery is not
counted against the redelivery limit. A fault of the worker itself (its model, GPU, disk or storage
access: ``workers.jobs.blame``) fails no video either: the task goes back to the queue uncounted and
the worker takes itself out of service (``workers.jobs.service``). Anything else fails the video,
with a message for the user, and keeps the worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from pipeline.core.errors import Cancelled, InputError, Sam3vError
from pipeline.core.heartbeats import Heartbeats
from pipeline.core.storage import StorageUnavailable
from workers.jobs import service
from workers.jobs.blame import worker_fault
from workers.jobs.cancel_cleanup import (
    drop_cancelled_work,
    drop_failed_work,
    drop_finished_work,
)
from workers.jobs.context import Context, context
from workers.jobs.outcomes import fail_video, stop_if_not_wanted

OUTAGES = (redis.ConnectionError, redis.TimeoutError, StorageUnavailable)

log = logging.getLogger(__name__)


def task_context(task: Task) -> Context:
    """``context()`` inside a task; if Redis or storage cannot be reached the video is not at fault:
    the task runs again later instead of leaving its video unfinished."""
    try:
        return context()
    except Exception as err:
        log.warning("%s: cannot reach Redis or storage (%s); retrying", task.name, err)
        raise task.retry(exc=err, countdown=5, max_retries=10) from None


class VideoFailed(Exception):
    """The task failed its video and recorded why: the task ends FAILURE (a ``task-failed`` event:
    Flower shows it failed and counts it), instead of staying STARTED there as an ignored task did."""


class VideoTask(Task):
    """A task about one video (args: job_id, video_id, ...). Whatever escapes its body (a time
    limit hit outside its own handlers, a bug) fails that video with the reason, so no video is
    left unfinished and its job open forever."""

    throws = (VideoFailed,)  # expected: logged as one line, without a traceback

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        if isinstance(exc, VideoFailed):
            return  # recorded by the task itself
        job_id, video_id = args[0], args[1]
        try:
            fail_video(context(), job_id, video_id, (kwargs or {}).get("attempt", 0),
                       f"internal error in {self.name}: {type(exc).__name__}: {exc}")
        except Exception:
            log.exception("%s: could not record the failure of %s/%s", self.name, job_id, video_id)


def wait_for_redis(ctx: Context, limit: float) -> None:
    deadline = time.monotonic() + limit
    pause = 0.5
    while True:
        try:
            ctx.status.r.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(5.0, pause * 2)


def retry_later(task: Task, ctx: Context, err: Exception, uncount: Callable[[], None] | None) -> None:
    """An outage interrupted the task: run it again later, its delivery not counted."""
    log.warning("%s: %s; running it again later", task.name, err)
    # Publishing the retry needs the broker (Redis), and the attempt's records need Redis too.
    wait_for_redis(ctx, max(5.0, ctx.settings.task_time_limit / 2))
    if uncount:
        uncount()
    retries = task.request.retries
    raise task.retry(exc=err, countdown=min(60, 2 ** retries), max_retries=ctx.settings.outage_retries)


def not_wanted(task: Task, ctx: Context, job_id: str, video_id: str, attempt: int) -> None:
    """End a task whose work is no longer wanted: REVOKED in Flower (a ``task-revoked`` event with
    the reason), ignored by Celery (no retry, no failure); a cancelled video's ``work/`` goes."""
    try:
        entry = ctx.status.video(job_id, video_id)
        if int(entry.get("attempt") or 0) != attempt:
            reason = f"superseded: its video runs again as attempt {entry.get('attempt')}"
        elif entry.get("status") == "succeeded":
            reason = "its video already ended (succeeded)"
            if drop_finished_work(ctx, job_id, video_id, attempt):
                reason += "; its work files removed"
        elif entry.get("status") == "cancelled" or ctx.status.is_cancelled(job_id):
            reason = "cancelled"
            drop_cancelled_work(ctx, job_id, video_id, attempt)
        else:
            reason = f"its video already ended ({entry.get('status')})"
    except OUTAGES as err:  # the reason is for people; sam3v.close_cancelled removes work/ too
        reason = "no longer wanted"
        log.warning("%s/%s: %s (work files may be left in storage)", job_id, video_id, err)
    log.info("%s of %s/%s: %s", task.name, job_id, video_id, reason)
    try:
        task.send_event("task-revoked", reason=reason, terminated=False, signum=None, expired=False, retry=False)
    except Exception as err:  # a monitoring event only: never a reason to run the task again
        log.warning("%s: could not send its task-revoked event: %s", task.name, err)
    raise Ignore()


def blame_worker(ctx: Context, err: Exception, uncount: Callable[[], None] | None) -> None:
    """If ``err`` is this worker's fault, not the video's: the task goes back to the queue, its
    delivery not counted, and the worker out of service. Returns when the video is at fault."""
    reason = worker_fault(err, ctx.settings.model) if service.active() else None
    if reason is None:
        return
    if uncount:
        uncount()
    service.out_of_service(reason)
    service.hand_back(reason)


def guarded(task: Task, ctx: Context, job_id: str, video_id: str, attempt: int, what: str, step: Callable,
             uncount: Callable[[], None] | None = None):
    """Run ``step``; an error fails this video (with a message for the user) and keeps the worker;
    an outage of Redis or storage runs the task again later."""
    bad_input = False
    try:
        return step()
    except OUTAGES as err:
        retry_later(task, ctx, err, uncount)
    except Cancelled as err:  # the video was cancelled or moved on: nothing to record, nobody to fail
        log.info("%s of %s/%s: %s", what, job_id, video_id, err)
        not_wanted(task, ctx, job_id, video_id, attempt)
    except SoftTimeLimitExceeded:
        message = f"{what} ran past the task time limit ({ctx.settings.task_time_limit} s)"
    except Sam3vError as err:
        blame_worker(ctx, err, uncount)
        message = str(err)
        bad_input = isinstance(err, InputError)
    except Exception as err:  # a bug: fail this video, keep the worker (unless the worker is at fault)
        blame_worker(ctx, err, uncount)
        log.exception("%s of %s/%s failed", what, job_id, video_id)
        message = f"internal error in {what}: {type(err).__name__}: {err}"
    fail_video(ctx, job_id, video_id, attempt, message)
    if bad_input:  # the source is at fault: its chunks' work cannot serve a retry
        try:
            drop_failed_work(ctx, job_id, video_id, attempt)
        except OUTAGES as err:
            log.warning("%s/%s: work files left in storage: %s", job_id, video_id, err)
    raise VideoFailed(message)


def started(task: Task, ctx: Context, job_id: str, video_id: str, attempt: int) -> None:
    """The checks every task makes first; then it shows a sign of life."""
    service.refuse_if_out_of_service()
    try:
        stop_if_not_wanted(ctx, job_id, video_id, attempt)
        Heartbeats(ctx.status.r).beat(job_id, video_id)
    except OUTAGES as err:
        retry_later(task, ctx, err, None)
    except Ignore:
        not_wanted(task, ctx, job_id, video_id, attempt)
