"""The backstop for lost work: a video stuck ``processing`` with nothing in flight is requeued.

Work is lost when a worker dies with it and its message cannot come back soon (a master killed with
-9 keeps its reserved messages in Redis's ``unacked`` set until the visibility timeout, an hour by
default), or when a task could not record its outcome (Redis down at the wrong moment, Redis
restarted from an AOF written with ``appendfsync everysec`` that lost the last second). Evidence:
``pipeline.core.heartbeats``. A requeue starts the video again from its first task under a new
attempt: chunks already done are skipped (their ``done.json``), and any task of the old attempt
that still turns up stops at its next step.

Every worker master runs the loop in a thread; a lock in Redis lets one of them sweep per interval.
Tasks mark their video's next step pending as they publish it (Celery's publish signals).
"""

from __future__ import annotations

import logging
import threading
import time

from celery import Celery
from celery.signals import (
    after_task_publish,
    before_task_publish,
    worker_ready,
    worker_shutdown,
)

from pipeline.core.celery_app import FINALIZE, PROBE, SEGMENT_CHUNK, queue_for
from pipeline.core.heartbeats import Heartbeats
from pipeline.core.redis_conn import connect
from pipeline.core.settings import Settings
from pipeline.core.status import StatusStore

log = logging.getLogger(__name__)
LOCK = "sam3v:sweeper:lock"
VIDEO_TASKS = (PROBE, SEGMENT_CHUNK, FINALIZE)
_PUBLISHED_AT = "sam3v_published_at"
_stop = threading.Event()


def sweep_once(app: Celery, status: StatusStore, beats: Heartbeats, settings: Settings,
               now: float | None = None) -> list[tuple[str, str]]:
    """Requeue every processing video that has been silent past the heartbeat timeout; returns them."""
    now = time.time() if now is None else now
    requeued = []
    for job_id, video_id in beats.silent_since(now - settings.heartbeat_timeout):
        entry = status.video(job_id, video_id)
        if entry.get("status") != "processing":
            beats.forget(job_id, video_id)  # it ended; its last task could not say so here
            continue
        attempt = status.requeue(job_id, video_id, int(entry.get("attempt") or 0))
        if attempt is None:
            continue
        beats.forget(job_id, video_id)
        lane = status.job_spec(job_id).get("lane", "batch")
        app.send_task(PROBE, args=[job_id, video_id], kwargs={"attempt": attempt}, queue=queue_for("cpu", lane))
        log.warning("job %s video %s: no sign of life for %.0f s and nothing queued: requeued as attempt %d",
                    job_id, video_id, settings.heartbeat_timeout, attempt)
        requeued.append((job_id, video_id))
    return requeued


def sweep_forever(app: Celery, settings: Settings, stop: threading.Event) -> None:
    r = connect(settings)
    status, beats = StatusStore(r), Heartbeats(r)
    while not stop.wait(settings.sweep_interval):
        try:
            if r.set(LOCK, "1", nx=True, ex=max(1, int(settings.sweep_interval))):
                sweep_once(app, status, beats, settings)
        except Exception as err:  # Redis away: the next round tries again
            log.warning("sweeper: %s", err)


@worker_ready.connect
def _start(sender=None, **_kwargs) -> None:
    from workers.jobs.context import settings

    _stop.clear()
    threading.Thread(target=sweep_forever, args=(sender.app, settings(), _stop), name="sam3v-sweeper",
                     daemon=True).start()


@worker_shutdown.connect
def _halt(**_kwargs) -> None:
    _stop.set()


@before_task_publish.connect
def _stamp(sender=None, headers=None, **_kwargs) -> None:
    if sender in VIDEO_TASKS and headers is not None:
        headers[_PUBLISHED_AT] = time.time()


@after_task_publish.connect
def _mark_pending(sender=None, headers=None, body=None, **_kwargs) -> None:
    """Runs where the task was published: in a worker for a chain's next step, in the producer for a
    video's first task (that one is ``queued`` and never swept; the mark is harmless)."""
    if sender not in VIDEO_TASKS or not headers or _PUBLISHED_AT not in headers:
        return
    try:
        from workers.jobs.context import context

        job_id, video_id = body[0][:2]
        Heartbeats(context().status.r).pending(job_id, video_id, headers[_PUBLISHED_AT])
    except Exception as err:  # the sweeper then sees no pending mark: at worst an early requeue
        log.warning("could not mark the next task of a video pending: %s", err)
