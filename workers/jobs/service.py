"""A `sam3v worker` in service, or out of it.

A worker whose model, GPU, disk or storage access is at fault (``workers.jobs.blame``) must not take
tasks: each would fail its video in a fraction of a second. So:

- At start, the master does not consume until one of its processes has loaded the model's weights
  (``ReadyGate``, a consumer bootstep before the event loop; a prefork child says so in the state
  directory after ``worker_process_init``), and a child that cannot load them takes the worker out
  of service instead.
- Later, a task that meets such a fault hands its message back (``Reject(requeue=True)``, never
  counted against SAM3V_MAX_REDELIVERIES) and takes the worker out of service.

Out of service: the reason is logged, written in the worker's record (``sam3v:worker:*``, shown on
``GET /health``) and in the state directory; the master gets SIGTERM (a warm shutdown: it stops
consuming, messages it held go back to the queue) and `sam3v worker` exits with EXIT_OUT_OF_SERVICE,
so a supervisor restarts it or alerts. Processes forked from the master share the state directory.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from celery import bootsteps
from celery.exceptions import Reject, WorkerShutdown

from pipeline.core import worker_registry
from pipeline.core.redis_conn import connect
from pipeline.core.settings import Settings

log = logging.getLogger(__name__)

EXIT_OUT_OF_SERVICE = 3
FAULT = "fault"
READY = "ready-"


@dataclass(frozen=True)
class Service:
    state: Path  # written by every process of this worker
    master: int
    record: worker_registry.WorkerRecord
    settings: Settings
    start_timeout: float


_service: Service | None = None


def begin(settings: Settings, record: worker_registry.WorkerRecord) -> Service:
    """Called by the master before Celery starts (its children inherit it through fork)."""
    global _service
    _service = Service(Path(tempfile.mkdtemp(prefix="sam3v-worker-")), os.getpid(), record, settings,
                       settings.worker_start_timeout)
    return _service


def end() -> str | None:
    """The master's last word: why the worker went out of service (None: it stopped as asked)."""
    if _service is None:
        return None
    reason = fault()
    shutil.rmtree(_service.state, ignore_errors=True)
    return reason


def fault() -> str | None:
    if _service is None:
        return None
    try:
        return (_service.state / FAULT).read_text()
    except FileNotFoundError:
        return None


def active() -> bool:
    """Whether this process belongs to a `sam3v worker` (embedded runs fail the video instead:
    their one in-process worker has no one to hand the task to)."""
    return _service is not None


def ready() -> None:
    """This process has its model (or needs none): the master may consume."""
    if _service is not None:
        (_service.state / f"{READY}{os.getpid()}").touch()


def record_fault(reason: str) -> None:
    """Say why the worker is out of service: its log, its state directory, its record in Redis."""
    assert _service is not None
    log.critical("worker out of service: %s", reason)
    try:  # the first reason wins: later ones are its consequences
        fd = os.open(_service.state / FAULT, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(reason)
    except FileExistsError:
        pass
    try:
        worker_registry.mark_out_of_service(connect(_service.settings), _service.record, reason)
    except Exception as err:  # Redis out of reach: the log and the exit status still say why
        log.warning("could not record the fault in Redis: %s", err)


def out_of_service(reason: str) -> None:
    """Take the whole worker out of service for ``reason`` (from any of its processes)."""
    record_fault(reason)
    try:
        os.kill(_service.master, signal.SIGTERM)  # warm shutdown: consume nothing more
    except ProcessLookupError:
        pass


def hand_back(why: str) -> None:
    """End this task without failing its video: its message goes back to the queue."""
    raise Reject(f"handed back to the queue: {why}", requeue=True)


def refuse_if_out_of_service() -> None:
    """A task given to a worker already out of service goes straight back to the queue."""
    reason = fault()
    if reason is not None:
        hand_back(f"this worker is out of service ({reason})")


class ReadyGate(bootsteps.StartStopStep):
    """The consumer starts consuming only once a process of this worker is ready (its model loaded),
    within SAM3V_WORKER_START_TIMEOUT; a fault or no process ready in time stops the worker."""

    requires = ("celery.worker.consumer.tasks:Tasks",)
    label = "sam3v ready gate"
    passed = False

    def start(self, c) -> None:
        if ReadyGate.passed or _service is None:
            return
        log.info("waiting for a worker process to load the model before consuming")
        deadline = time.monotonic() + _service.start_timeout + 5
        while time.monotonic() < deadline:
            reason = fault()
            if reason is not None:
                raise WorkerShutdown(EXIT_OUT_OF_SERVICE)
            if any(p.name.startswith(READY) for p in _service.state.iterdir()):
                ReadyGate.passed = True  # children forked later inherit it
                log.info("a worker process has its model: consuming")
                return
            time.sleep(0.1)
        out_of_service(f"no process got ready within SAM3V_WORKER_START_TIMEOUT ({_service.start_timeout:.0f} s)")
        raise WorkerShutdown(EXIT_OUT_OF_SERVICE)
