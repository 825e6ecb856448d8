"""The embedded runner: the same Celery tasks with an in-process broker (memory://), an in-process
Redis (fakeredis) and a worker thread, so one process runs a whole job with no Redis or S3."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path

from celery import Celery
from celery.worker import WorkController

from pipeline.core.settings import Settings

QUEUES = ("gpu", "cpu", "interactive-gpu", "interactive-cpu")


def embedded_settings(out: Path, model: str | None = None, base: Settings | None = None) -> Settings:
    """``base`` (the environment's settings) with no broker or Redis and local storage in ``out``."""
    base = base or Settings()
    changes = {"broker_url": None, "redis_url": None, "storage_url": str(Path(out).resolve())}
    if model:
        changes["model"] = model
    return base.model_copy(update=changes)


def embedded_app(settings: Settings) -> Celery:
    """The worker's Celery app for ``settings`` (which must name no broker), tasks registered."""
    if settings.broker_url:
        raise RuntimeError("the embedded runner needs the in-process broker (SAM3V_BROKER_URL unset)")
    from sam3v.embedded_broker import TRANSPORT
    from workers.jobs.app import worker_app

    app = worker_app(settings)
    app.conf.broker_transport = TRANSPORT  # memory://, its queues read cpu first (see there)
    return app


@contextmanager
def embedded_worker(app: Celery, queues=QUEUES):
    if not str(app.conf.broker_url).startswith("memory://"):
        raise RuntimeError("the embedded worker needs the in-process broker (SAM3V_BROKER_URL unset)")
    worker = WorkController(app=app, concurrency=1, pool="solo", queues=list(queues), loglevel="WARNING",
                            without_heartbeat=True, without_mingle=True, without_gossip=True,
                            hostname="embedded@sam3v", ready_callback=None)
    thread = threading.Thread(target=worker.start, name="sam3v-embedded-worker", daemon=True)
    thread.start()
    try:
        yield worker
    finally:
        worker.stop(in_sighandler=False, exitcode=0)
        thread.join(30)
