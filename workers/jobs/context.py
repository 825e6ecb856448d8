"""A worker process's context: its settings, status store, storage and model, each built once.

Entry points hand the settings over with ``configure`` (or ``workers.jobs.app.worker_app``) instead
of editing the environment; without that, the environment's settings apply. This is the bottom of
the jobs room: everything that runs a task reads its context here, and nothing here imports a task.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from functools import lru_cache

from pipeline.core.redis_conn import connect
from pipeline.core.settings import Settings, get_settings
from pipeline.core.status import StatusStore
from pipeline.core.storage import Storage, open_storage


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


def preload_model() -> bool:
    """Whether this process loads the model before it takes a task (a worker of a GPU queue)."""
    return _configured.preload_model


def settings() -> Settings:
    return _configured.settings or get_settings()


@lru_cache(maxsize=1)
def context() -> Context:
    s = settings()
    return Context(s, StatusStore(connect(s)), open_storage(s.storage_url))


_model_lock = threading.Lock()


@lru_cache(maxsize=1)
def _load():
    from workers.model.loading import load_model

    s = settings()
    return load_model(s.model, s.device, s.torch_threads, s.object_batch)


def model():
    """Loaded once per worker process, never in a prefork parent (CUDA cannot survive a fork); a
    threads pool's first tasks wait for the one load."""
    with _model_lock:
        return _load()
