"""Embedded mode: the same Celery tasks with an in-process broker (memory://) and worker thread."""

from __future__ import annotations

import threading
from contextlib import contextmanager

from celery.worker import WorkController


@contextmanager
def embedded_worker(app, queues=("gpu", "cpu", "interactive-gpu", "interactive-cpu")):
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
