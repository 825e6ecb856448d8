"""The worker's Celery app and its processes' start: the top of the jobs room.

``worker_app`` registers the task bodies on an app built from the settings. A prefork child builds
its context in ``worker_process_init``, before it reports up to its parent (see ``_warm_up_child``),
and loads the model there too when the worker consumes a GPU queue; the parent waits for that up to
``SAM3V_WORKER_START_TIMEOUT`` (``pipeline.core.celery_app``).
"""

from __future__ import annotations

import logging
import time

from celery import Celery
from celery.signals import worker_process_init

from pipeline.core.celery_app import make_app
from pipeline.core.settings import Settings
from workers.jobs import service
from workers.jobs.allocator import pin_malloc_thresholds
from workers.jobs.context import configure, context, model, preload_model, settings

log = logging.getLogger(__name__)


def worker_app(settings: Settings, preload_model: bool = False) -> Celery:
    """The Celery app with this package's task bodies registered, for ``settings``."""
    # Before any task (and before a prefork pool forks: its children inherit the settings).
    pin_malloc_thresholds()
    configure(settings, preload_model)
    app = make_app(settings)
    if settings.effective_redis_url:
        from pipeline.control import schedules

        schedules.configure(app, settings.effective_redis_url)
    # Registers the task bodies on every app, this one included.
    import workers.jobs.schedule_task  # noqa: F401
    import workers.jobs.tasks  # noqa: F401

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
        from workers.jobs.blame import worker_fault

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
    import workers.chunks.chunk_runner  # noqa: F401
    import workers.chunks.finalize  # noqa: F401
    import workers.chunks.video_steps  # noqa: F401

    try:
        context()
    except Exception as err:  # not reachable yet: the first task builds it (and retries if it must)
        log.warning("worker context: %s", err)
    # The model loads here (with SAM 3's mask post-processing, which load_model refuses to run
    # without), before the process takes a task; the ready line names the backend that runs it.
    if preload_model() and not _model_ready():
        return  # the worker goes out of service: this process tells its master not to consume
    postprocess = f"; mask post-processing: {model().postprocess.backend}" if preload_model() else ""
    service.ready()
    took, limit = time.monotonic() - started, settings().worker_start_timeout
    log.log(logging.WARNING if took > limit / 2 else logging.INFO,
            "process ready in %.1f s (SAM3V_WORKER_START_TIMEOUT: %.0f s)%s", took, limit, postprocess)
