"""A running chunk's ties to its job: progress written, whether it is still wanted, its deadline.

All three are asked every frame and cost almost nothing: Redis is read or written at most every
second or two, and a Redis blip never stops a chunk (its outcome is recorded, or retried, at its end).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from pipeline.core.heartbeats import Heartbeats
from workers.jobs.context import Context
from workers.jobs.outcomes import stop_if_not_wanted

log = logging.getLogger(__name__)


def progress_reporter(ctx: Context, job_id: str, video_id: str, attempt: int,
                      offset: int = 0) -> Callable[[int], None]:
    """Frames done (``offset`` plus the count given: a forward chunk counts after the backward pass's
    frames) and a heartbeat, written at most every 2 s. Best effort: a chunk does not stop for a
    Redis blip; its outcome is recorded (or retried) when it ends."""
    last_report = [0.0]
    beats = Heartbeats(ctx.status.r)

    def report(done: int) -> None:
        if time.monotonic() - last_report[0] > 2.0:
            last_report[0] = time.monotonic()
            try:
                beats.beat(job_id, video_id)
                ctx.status.update_video(job_id, video_id, fence=attempt, frames_done=offset + done)
            except (redis.ConnectionError, redis.TimeoutError) as err:
                log.warning("progress of %s/%s not recorded: %s", job_id, video_id, err)

    return report


def wanted(ctx: Context, job_id: str, video_id: str, attempt: int) -> bool:
    """False once the video is cancelled, ended or retried under a new attempt."""
    try:
        stop_if_not_wanted(ctx, job_id, video_id, attempt)
    except Ignore:
        return False
    return True


def soft_deadline(task: Task) -> float:
    """When the task's soft time limit passes (monotonic clock). Celery enforces its limits only in
    prefork (and gevent) pools; a GPU worker with several streams runs a threads pool, so the chunk
    enforces the same limit itself, at its next frame."""
    limit = task.soft_time_limit or task.app.conf.task_soft_time_limit or task.app.conf.task_time_limit
    return time.monotonic() + limit if limit else float("inf")


def stop_check(ctx: Context, job_id: str, video_id: str, attempt: int, every: float = 1.0,
                deadline: float = float("inf")) -> Callable[[], bool]:
    """A running chunk's ``should_stop``: asked every frame, it reads Redis at most every ``every``
    seconds. A Redis blip is not a reason to stop: the next check asks again. Past ``deadline`` it
    raises ``SoftTimeLimitExceeded``, as Celery's own soft limit would."""
    next_check = [time.monotonic() + every]

    def should_stop() -> bool:
        if time.monotonic() > deadline:
            raise SoftTimeLimitExceeded("the chunk ran past its soft time limit")
        if time.monotonic() < next_check[0]:
            return False
        next_check[0] = time.monotonic() + every
        try:
            return not wanted(ctx, job_id, video_id, attempt)
        except (redis.ConnectionError, redis.TimeoutError) as err:
            log.warning("cannot tell whether %s/%s is still wanted: %s", job_id, video_id, err)
            return False

    return should_stop
