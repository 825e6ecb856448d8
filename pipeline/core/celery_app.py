"""The Celery application: task names, queues, routes and the delivery settings that matter.

``make_app(settings)`` builds it; nothing builds one at import time. The control plane sends tasks
by these names and never imports the data plane; a worker's entry point builds the app and
registers the task bodies (``workers.jobs.app.worker_app``).
"""

from __future__ import annotations

from celery import Celery

from pipeline.core.queue_order import STRATEGY as QUEUE_ORDER
from pipeline.core.settings import Settings

PROBE = "sam3v.probe"
SEGMENT_CHUNK = "sam3v.segment_chunk"
FINALIZE = "sam3v.finalize"
CLOSE_CANCELLED = "sam3v.close_cancelled"  # a cancelled job's results.jsonl and work/ cleanup
EMBEDDED_BROKER = "memory://"

#: Every queue a task can be sent to, in the order a worker that consumes them all reads them
#: (interactive first: ``pipeline.core.queue_order``).
ALL_QUEUES = ("interactive-gpu", "interactive-cpu", "gpu", "cpu")

ROUTES = {
    PROBE: {"queue": "cpu"},
    SEGMENT_CHUNK: {"queue": "gpu"},
    FINALIZE: {"queue": "cpu"},
    CLOSE_CANCELLED: {"queue": "cpu"},
}


def queue_for(kind: str, lane: str = "batch") -> str:
    """``kind`` gpu|cpu. Interactive work (the HTTP API) has queues of its own, so a 10,000-video
    batch never blocks it; a worker may consume both (``--queues gpu,interactive-gpu``)."""
    return kind if lane == "batch" else f"interactive-{kind}"


def make_app(settings: Settings) -> Celery:
    broker = settings.broker_url or EMBEDDED_BROKER
    app = Celery("sam3v", broker=broker, set_as_current=True)
    # Also the process-wide default: a chain's next step is rebuilt with the *default* app in the
    # worker's threads, which would otherwise be Celery's own (amqp://localhost).
    app.set_default()
    # Redis redelivers an unacked task after visibility_timeout; it must exceed the hard time
    # limit or a long chunk runs twice. Celery reads it from three places: set all three.
    transport = {"visibility_timeout": settings.visibility_timeout}
    # Interactive queues are read before batch ones (kombu round-robins them by default).
    broker_transport = {**transport, "queue_order_strategy": QUEUE_ORDER}
    if settings.restore_interval:  # kombu looks every interval, and scans Redis only every throttle-th look
        broker_transport.update(unacked_restore_interval=settings.restore_interval, unacked_restore_throttle=1)
    app.conf.update(
        task_routes=ROUTES,
        task_default_queue="cpu",
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A prefork child that has not reported up this long after it was forked is killed (Celery's
        # default, 4 s). The child reports up only after worker_process_init, where it imports the
        # heavy modules and loads the model (workers.jobs.context): seconds to minutes. With the default,
        # every replacement of a dead child (an OOM kill) was killed in turn and the worker never
        # ran a task again. Kept there rather than loading in the background after reporting up:
        # the load then counts against no task's time limit, and the master hands a task only to a
        # child that can run it (a task it holds meanwhile runs once the child is up).
        worker_proc_alive_timeout=settings.worker_start_timeout,
        task_time_limit=settings.task_time_limit,
        # The soft limit leaves the task time to fail its video cleanly: 30 s, or a quarter of a
        # short limit (a 40 s limit keeps 30 s of work, not 10).
        task_soft_time_limit=max(1, settings.task_time_limit - min(30, settings.task_time_limit // 4)),
        broker_transport_options=broker_transport,
        result_backend_transport_options=transport,
        visibility_timeout=settings.visibility_timeout,
        task_ignore_result=True,
        worker_send_task_events=True,
        task_send_sent_event=True,
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        accept_content=["json"],
    )
    return app
