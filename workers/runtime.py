"""A worker process's context: its settings, status store, storage and model, each built once.

Entry points hand the settings over with ``configure`` (or ``worker_app``) instead of editing the
environment; without that, the environment's settings apply. A prefork child builds its context
in ``worker_process_init``, before it reports up to its parent (see ``_warm_up_child``), and loads
the model there too when the worker consumes a GPU queue; the parent waits for that up to
``SAM3V_WORKER_START_TIMEOUT`` (``pipeline.core.celery_app``).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from functools import lru_cache

from celery import Celery
from celery.signals import worker_process_init

from pipeline.core.celery_app import make_app
from pipeline.core.redis_conn import connect
from pipeline.core.settings import Settings, get_settings
from pipeline.core.status import StatusStore
from pipeline.core.storage import Storage, open_storage
from workers import service
from workers.allocator import pin_malloc_thresholds

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Configured:
    settings: Settings | None = None
    preload_model: bool = False


_configured = Configured()


@dataclass
class Context:
    settings: Settings
    status: StatusStore
    storage: Storage


def configure(settings: Settings, preload_model: bool = False) -> None:
    """Use ``settings`` in this process (and the children it forks) from now on."""
    global _configured
    _configured = Configured(settings, preload_model)
    context.cache_clear()
    _load.cache_clear()


def settings() -> Settings:
    return _configured.settings or get_settings()


@lru_cache(maxsize=1)
def context() -> Context:
    s = settings()
    return Context(s, StatusStore(connect(s)), open_storage(s.storage_url))


_model_lock = threading.Lock()


@lru_cache(maxsize=1)
def _load():
    from workers.model import load_model

    s = settings()
    return load_model(s.model, s.device, s.torch_threads, s.object_batch)


def model():
    """Loaded once per worker process, never in a prefork parent (CUDA cannot survive a fork); a
    threads pool's first tasks wait for the one load."""
    with _model_lock:
        return _load()



def worker_app(settings: Settings, preload_model: bool = False) -> Celery:
    """The Celery app with this package's task bodies registered, for ``settings``."""
    # Before any task (and before a prefork pool forks: its children inherit the settings).
    pin_malloc_thresholds()
    configure(settings, preload_model)
    app = make_app(settings)
    if settings.effective_redis_url:
        from pipeline.control import schedules

        schedules.configure(app, settings.effective_redis_url)
    import workers.tasks  # noqa: F401  (registers the task bodies on every app, this one included)

    return app


def _model_ready() -> bool:
    """Load the model's weights (not only its config) in this process, the one that will use them;
    a failure is the worker's, never a video's: out of service, naming SAM3V_MODEL."""
    try:
        model()
        return True
    except Exception as err:
        if not service.active():
            raise
        from workers.blame import worker_fault

        reason = worker_fault(err, settings().model) or f"SAM3V_MODEL={settings().model}: cannot load the model: {err}"
        service.out_of_service(reason)
        return False


@worker_process_init.connect
def _warm_up_child(**_kwargs) -> None:
    # First imports (transformers, scipy) and the storage client's first build (boto3 reads its
    # service models from disk) count against no task's time limit this way: on a busy host they
    # took longer than a finalize's soft limit, before the task could fail its video cleanly.
    # The parent kills a child not up within SAM3V_WORKER_START_TIMEOUT: the time it took is logged
    # so that a deployment sees how close it comes.
    started = time.monotonic()
    import workers.chunk_runner  # noqa: F401
    import workers.finalize  # noqa: F401
    import workers.video_steps  # noqa: F401

    try:
        context()
    except Exception as err:  # not reachable yet: the first task builds it (and retries if it must)
        log.warning("worker context: %s", err)
    # The model loads here (with SAM 3's mask post-processing, which load_model refuses to run
    # without), before the process takes a task; the ready line names the backend that runs it.
    if _configured.preload_model and not _model_ready():
        return  # the worker goes out of service: this process tells its master not to consume
    postprocess = f"; mask post-processing: {model().postprocess.backend}" if _configured.preload_model else ""
    service.ready()
    took, limit = time.monotonic() - started, settings().worker_start_timeout
    log.log(logging.WARNING if took > limit / 2 else logging.INFO,
            "process ready in %.1f s (SAM3V_WORKER_START_TIMEOUT: %.0f s)%s", took, limit, postprocess)
