"""What `sam3v worker` does before Celery starts: the start checks (queues, concurrency, Redis,
storage, and the model's source when the worker runs the model), then its record in Redis
(``pipeline.core.worker_registry``) kept fresh while it lives. All in the parent: no CUDA, no weights
(the weights load in the process that uses them before the worker consumes: ``workers.jobs.service``)."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pipeline.core import worker_registry
from pipeline.core.errors import ModelUnavailableError
from pipeline.core.preflight import check_worker_start
from pipeline.core.redis_conn import connect
from pipeline.core.settings import Settings


@dataclass
class Started:
    queues: list[str]  # in reading order (interactive first)
    runs_model: bool
    stop: threading.Event  # set it when the worker ends: its record is withdrawn
    record: worker_registry.WorkerRecord


def node_name(hostname: str | None) -> str:
    """The Celery node name the worker will have (``--hostname`` with %h expanded, else celery@host)."""
    from celery.utils.nodenames import default_nodename, host_format

    return host_format(default_nodename(hostname))


def start_checks(settings: Settings, queues: str, concurrency: int, hostname: str | None) -> Started:
    """Refuse to start (``InputError`` naming the setting) or publish this worker's record."""
    names = check_worker_start(settings, queues, concurrency)
    runs_model = any(q.endswith("gpu") for q in names)
    if runs_model:
        from workers.model.model_source import check_model_source

        try:
            check_model_source(settings.model)
        except ModelUnavailableError as err:  # name the setting: the worker has no --model flag
            raise ModelUnavailableError(f"SAM3V_MODEL={settings.model}: {err}") from None
    stop = threading.Event()
    record = worker_registry.new_record(node_name(hostname), names, settings.storage_url)
    worker_registry.keep_published(connect(settings), record, stop)
    return Started(names, runs_model, stop, record)
