"""The FastAPI application: what a process holds while it serves (the ``Generations`` service, the
webhook dispatcher, the upload sweeper, the async Redis client and event hub, and in embedded mode
the in-process worker) and which routers it serves. Routes mirror the hosted ``sam-3-video`` API
(same paths, bodies and response shapes), one router per tag in ``sam3v.api.routes``; ``/docs``
documents them all."""

from __future__ import annotations

import threading
from contextlib import AbstractContextManager, asynccontextmanager, nullcontext

from fastapi import FastAPI

from sam3v.api import errors
from sam3v.api.auth import load_key_digests
from sam3v.api.hub import EventHub
from sam3v.api.routes import events, health, models, queue, sync, uploads
from sam3v.api.service import Generations
from sam3v.api.uploads import sweep_forever
from sam3v.api.webhooks import WebhookDispatcher


def _build_generations(settings) -> tuple[Generations, AbstractContextManager]:
    """The service, and what runs its tasks inside this process: nothing when a broker feeds
    workers elsewhere; in embedded mode the worker on the in-process broker (entered by the
    lifespan, after everything else has started)."""
    from pipeline.core.redis_conn import connect
    from pipeline.core.storage import open_storage

    if settings.broker_url:
        from pipeline.core.celery_app import make_app

        celery_app = make_app(settings)
        worker = nullcontext()
    else:
        from sam3v.embedded import embedded_app, embedded_worker

        celery_app = embedded_app(settings)
        worker = embedded_worker(celery_app)
    return Generations(settings, connect(settings), celery_app, open_storage(settings.storage_url)), worker


def _open_async_redis(app: FastAPI, url: str | None) -> None:
    """The async client of the hot routes and the SSE hub; none over the in-process Redis of
    embedded mode, which only the sync client can reach."""
    app.state.aredis = None
    if url:
        import redis.asyncio as aredis

        from pipeline.core.redis_conn import client_options

        options = client_options(asyncio=True)
        pool = aredis.BlockingConnectionPool.from_url(url, decode_responses=True, max_connections=64, timeout=30,
                                                      **options)
        app.state.aredis = aredis.Redis(connection_pool=pool)
        app.state.hub = EventHub(aredis.Redis.from_url(url, decode_responses=True, **options))


async def _close_async_redis(app: FastAPI) -> None:
    if app.state.aredis is not None:
        await app.state.hub.close()
        await app.state.hub.r.aclose()
        await app.state.aredis.aclose()


@asynccontextmanager
async def _lifespan(app: FastAPI):
    settings = app.state.settings
    gens, worker = _build_generations(settings)
    app.state.gens = gens
    dispatcher = WebhookDispatcher(gens)
    dispatcher.start()
    sweeping = threading.Event()
    threading.Thread(target=sweep_forever, args=(gens.r, gens.storage, settings.api_upload_sweep, sweeping),
                     name="upload-sweeper", daemon=True).start()
    _open_async_redis(app, settings.effective_redis_url)
    with worker:
        yield
    dispatcher.close()
    sweeping.set()
    await _close_async_redis(app)


def create_app(settings=None) -> FastAPI:
    from pipeline.core.settings import get_settings

    settings = settings or get_settings()
    app = FastAPI(title="sam3v API", version="1", lifespan=_lifespan,
                  description="A drop-in for the hosted `sam-3-video` model: sync generation, async queue, "
                              "server-sent events and model details. Every route needs `Authorization: Bearer <key>`.")
    app.state.settings = settings
    app.state.key_digests = load_key_digests()
    errors.install(app)
    app.include_router(queue.router)
    app.include_router(sync.router)
    app.include_router(events.router)
    # The one route whose body limit is a setting: multipart overhead on top of the largest upload.
    app.include_router(uploads.router, max_body_size=settings.api_upload_max_bytes + 64 * 1024)
    app.include_router(uploads.webhooks_router)
    app.include_router(models.router)
    app.include_router(health.router)
    return app
