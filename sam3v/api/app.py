"""The FastAPI application. Routes mirror the hosted ``sam-3-video`` API (same paths, bodies and
response shapes); ``/docs`` documents them all."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import re
import threading
import time
from contextlib import asynccontextmanager
from functools import cache
from typing import Literal

import anyio
from fastapi import Depends, FastAPI, File, Header, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response
from sse_starlette.sse import EventSourceResponse

from sam3v.api import errors
from sam3v.api.auth import load_key_digests, owner
from sam3v.api.errors import APIError, error_body
from sam3v.api.hub import EventHub, id_key
from sam3v.api.schemas import MODEL_ID, GenerateRequest, GenerationRequest, request_schema
from sam3v.api.service import EVENT_NAMES, TERMINAL, VIDEO_ID, Generations, gen_key
from sam3v.api.uploads import store_upload, sweep_forever
from sam3v.api.webhooks import WebhookDispatcher, key_secret, server_secret
from pipeline.core.status import EVENTS

_STREAM_ID = re.compile(r"^\d+(-\d+)?$")
JSON_BODY_MAX = 1024 * 1024  # request bodies are a few hundred bytes; videos come by URL or upload


@cache  # the schema is built from the pydantic model: a few ms that need not be paid per request
def model_object() -> dict:
    return {
        "id": MODEL_ID, "object": "model", "name": "Segment Anything 3 - Video", "owned_by": "sam3v",
        "description": "Detects, segments and tracks every instance of a text concept across video frames.",
        "task": "video_segmentation", "input_modalities": ["video", "text"], "output_modalities": ["video"],
        "json_request_schema": request_schema(),
    }


def _build_generations(settings) -> Generations:
    from pipeline.core.redis_conn import connect
    from pipeline.core.storage import open_storage

    if settings.broker_url:
        from pipeline.core.celery_app import make_app

        celery_app = make_app(settings)
    else:  # embedded: the worker's own app (in-process broker) runs in this process
        from workers.tasks import app as celery_app
    return Generations(settings, connect(settings), celery_app, open_storage(settings.storage_url))


def create_app(settings=None) -> FastAPI:
    from pipeline.core.settings import get_settings

    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        gens = _build_generations(settings)
        app.state.gens = gens
        dispatcher = WebhookDispatcher(gens)
        dispatcher.start()
        sweeping = threading.Event()
        threading.Thread(target=sweep_forever, args=(gens.r, gens.storage, settings.api_upload_sweep, sweeping),
                         name="upload-sweeper", daemon=True).start()
        app.state.aredis = None
        if settings.effective_redis_url:
            import redis.asyncio as aredis

            pool = aredis.BlockingConnectionPool.from_url(settings.effective_redis_url, decode_responses=True,
                                                          max_connections=64, timeout=30)
            app.state.aredis = aredis.Redis(connection_pool=pool)
            app.state.hub = EventHub(aredis.Redis.from_url(settings.effective_redis_url, decode_responses=True))
        if settings.broker_url:
            yield
        else:
            from sam3v.embedded import embedded_worker

            with embedded_worker(gens.celery):
                yield
        dispatcher.close()
        sweeping.set()
        if app.state.aredis is not None:
            await app.state.hub.close()
            await app.state.hub.r.aclose()
            await app.state.aredis.aclose()

    app = FastAPI(title="sam3v API", version="1", lifespan=lifespan,
                  description="A drop-in for the hosted `sam-3-video` model: sync generation, async queue, "
                              "server-sent events and model details. Every route needs `Authorization: Bearer <key>`.")
    app.state.key_digests = load_key_digests()
    errors.install(app)

    def gens(request: Request) -> Generations:
        return request.app.state.gens

    def check_model(model: str) -> None:
        if model != MODEL_ID:
            raise APIError(404, "model_not_found", f"unknown model {model!r} (this server runs {MODEL_ID})")

    def submit(g: Generations, body: GenerationRequest, who: str, base_url: str) -> list[str]:
        check_model(body.model)
        video = g.check_input(body, who)
        return [g.create(body, who, base_url, video) for _ in range(body.num_generations)]

    # --- async queue --------------------------------------------------------------------------
    @app.post("/api/ai/queue", tags=["queue"], summary="Queue generations", max_body_size=JSON_BODY_MAX)
    def enqueue(body: GenerationRequest, request: Request, who: str = Depends(owner)):
        """Queue `num_generations` generations; answers their ids with status `queued`."""
        ids = submit(gens(request), body, who, str(request.base_url))
        return {"generations": [{"generation_id": i, "status": "queued", "model": body.model} for i in ids]}

    @app.get("/api/ai/queue", tags=["queue"], summary="List your generations")
    def list_generations(request: Request, who: str = Depends(owner),
                         status: Literal["queued", "processing", "succeeded", "failed", "cancelled"] | None = None,
                         model: str | None = None, limit: int = Query(50, ge=1, le=500)):
        """The caller's generations, newest first, optionally filtered by status and model."""
        return {"generations": gens(request).list(who, str(request.base_url), status, model, limit)}

    @app.get("/api/ai/queue/{generation_id}", tags=["queue"], summary="A generation's status and results")
    async def get_generation(generation_id: str, request: Request, who: str = Depends(owner)):
        """Status (queued, processing, succeeded, failed, cancelled); `result_url` (overlay if apply_mask,
        else mask) and `result_urls` once succeeded; `error_message` once failed."""
        g = gens(request)
        ar = request.app.state.aredis
        if ar is None:
            return await run_in_threadpool(g.document, generation_id, await run_in_threadpool(g.meta, generation_id, who),
                                           str(request.base_url))
        async with ar.pipeline(transaction=False) as pipe:
            meta, raw = await pipe.hgetall(gen_key(generation_id)).hget(
                f"sam3v:job:{generation_id}:videos", VIDEO_ID).execute()
        if not meta or not hmac.compare_digest(meta.get("owner", ""), who):
            raise APIError(404, "not_found", f"no generation {generation_id}")
        # The hot path of every polling client: a ready Response skips FastAPI's jsonable_encoder walk.
        return JSONResponse(g.document(generation_id, meta, str(request.base_url), json.loads(raw) if raw else {}))

    def change(request: Request, generation_id: str, who: str, action) -> dict:
        g = gens(request)
        meta = g.meta(generation_id, who)  # 404 before anything changes for someone else's id
        action(g, generation_id)
        return g.document(generation_id, meta, str(request.base_url))

    @app.delete("/api/ai/queue/{generation_id}", tags=["queue"], summary="Cancel a generation")
    def cancel_generation(generation_id: str, request: Request, who: str = Depends(owner)):
        """Stop a queued or running generation; it stays listed with status `cancelled`."""
        return change(request, generation_id, who, Generations.cancel)

    @app.post("/api/ai/queue/{generation_id}/retry", tags=["queue"], summary="Retry a failed or cancelled generation")
    def retry_generation(generation_id: str, request: Request, who: str = Depends(owner)):
        """Queue a failed or cancelled generation again (409 otherwise); same id, new attempt."""
        return change(request, generation_id, who, Generations.retry)

    @app.get("/api/ai/queue/{generation_id}/files/{name}", tags=["queue"], summary="Download an output",
             response_class=Response)
    def download(generation_id: str, name: str, request: Request, who: str = Depends(owner)):
        """An output (`overlay`, `mask` or `masks`) of a succeeded generation. `result_urls` point here
        when storage is a local directory; with S3 they are presigned URLs instead."""
        g = gens(request)
        g.meta(generation_id, who)
        key, local = g.file(generation_id, name)
        media = "application/json" if key.endswith(".json") else "video/mp4"
        if local is not None:
            return FileResponse(local, media_type=media, filename=local.name)
        return Response(g.storage.get_bytes(key), media_type=media)

    # --- sync ---------------------------------------------------------------------------------
    @app.post("/api/ai/videos/generate", tags=["sync"], summary="Generate and wait", max_body_size=JSON_BODY_MAX)
    async def generate(body: GenerateRequest, request: Request, who: str = Depends(owner)):
        """Blocks until the generation ends (at most SAM3V_API_SYNC_TIMEOUT seconds, default 600,
        then 504 with the generation_id: poll it with GET /api/ai/queue/{id})."""
        g = gens(request)
        ids = await run_in_threadpool(submit, g, body, who, str(request.base_url))
        deadline = time.monotonic() + g.settings.api_sync_timeout
        pending = set(ids)
        while pending:
            for gen_id in list(pending):
                video = await run_in_threadpool(g.store.video, gen_id, VIDEO_ID)
                if video.get("status") in TERMINAL:
                    pending.discard(gen_id)
            if not pending:
                break
            if time.monotonic() > deadline:
                return JSONResponse(error_body("timeout", f"generation {ids[0]} did not finish within "
                                               f"{g.settings.api_sync_timeout:.0f} s; poll GET /api/ai/queue/{ids[0]}",
                                               generation_id=ids[0], generation_ids=ids), 504)
            await asyncio.sleep(0.25)
        base = str(request.base_url)
        docs = []
        for gen_id in ids:
            meta = await run_in_threadpool(g.meta, gen_id, who)
            docs.append(await run_in_threadpool(g.document, gen_id, meta, base))
        first = docs[0]
        if first["status"] != "succeeded":
            code, status = ("generation_cancelled", 409) if first["status"] == "cancelled" else ("generation_failed", 422)
            return JSONResponse(error_body(code, first["error_message"] or first["status"],
                                           generation_id=first["generation_id"], status=first["status"]), status)
        answer = {"created": first["created_at"], "model": first["model"], "generation_id": first["generation_id"],
                  "status": first["status"], "result_url": first["result_url"], "result_urls": first["result_urls"]}
        if body.response_format == "b64_json":
            names = [n for n, u in first["result_urls"].items() if u == first["result_url"]]
            data = await run_in_threadpool(g.storage.get_bytes, f"{first['generation_id']}/{VIDEO_ID}/"
                                           + {"masks": "masks.json"}.get(names[0], f"{names[0]}.mp4"))
            answer["b64_json"] = base64.b64encode(data).decode()
            answer["data"] = [{"b64_json": answer["b64_json"]}]
        else:
            answer["data"] = [{"url": d["result_url"], "generation_id": d["generation_id"]} for d in docs]
        if len(docs) > 1:
            answer["generations"] = docs
        return answer

    # --- events -------------------------------------------------------------------------------
    @app.get("/api/events", tags=["events"], summary="Server-sent events for your generations")
    async def events(request: Request, who: str = Depends(owner),
                     last_event_id: str | None = Header(None, alias="Last-Event-ID")):
        """`event: media_generation_completed` / `media_generation_failed` / `media_generation_cancelled`,
        `data:` one-line JSON with `generation_id`, `status`, `result_url` or `error_message`. The event id is
        the Redis stream id: reconnect with `Last-Event-ID` to resume without loss. Comment pings keep idle
        connections open."""
        g = gens(request)
        ar = request.app.state.aredis
        if last_event_id and not _STREAM_ID.match(last_event_id.strip()):
            raise APIError(422, "invalid_request", "Last-Event-ID: not an event id", field="Last-Event-ID")
        if last_event_id:
            start = last_event_id.strip()
        else:  # from now on: the newest id in the stream (fixed before the response starts)
            newest = await ar.xrevrange(EVENTS, count=1) if ar is not None else \
                await run_in_threadpool(g.r.xrevrange, EVENTS, "+", "-", 1)
            start = _str(newest[0][0]) if newest else "0-0"
        base = str(request.base_url)
        stream = _hub_stream(g, ar, request.app.state.hub, who, start, base) if ar is not None else \
            _poll_stream(g, who, start, base)
        return EventSourceResponse(stream, ping=g.settings.api_sse_ping, sep="\n",
                                   headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # --- uploads and webhooks -----------------------------------------------------------------
    @app.post("/api/ai/uploads", tags=["uploads"], summary="Upload a video to name as input_video",
              max_body_size=settings.api_upload_max_bytes + 64 * 1024)
    def upload(request: Request, file: UploadFile = File(..., description="The video (multipart/form-data)."),
               who: str = Depends(owner)):
        """Stores the file; answers `input_video: "upload://<id>"` to use in POST /api/ai/queue or
        /api/ai/videos/generate. Only your key can use it, for SAM3V_API_UPLOAD_TTL seconds."""
        g = gens(request)
        return store_upload(g.r, g.storage, file.file, file.filename, who, g.settings.api_upload_max_bytes,
                            g.settings.api_upload_ttl)

    @app.get("/api/ai/webhooks/secret", tags=["webhooks"], summary="Your webhook signing secret")
    def webhook_secret(request: Request, who: str = Depends(owner)):
        """Webhook bodies carry `X-Sam3v-Signature: t=<unix time>,v1=<hex>`, where hex is
        HMAC-SHA256(secret, `<t>.<raw body>`). Each key has its own secret."""
        g = gens(request)
        return {"secret": key_secret(server_secret(g.r, g.settings.api_webhook_secret), who),
                "header": "X-Sam3v-Signature", "scheme": "t=<unix time>,v1=hex(HMAC-SHA256(secret, '<t>.<body>'))"}

    # --- models -------------------------------------------------------------------------------
    @app.get("/api/ai/models", tags=["models"], summary="Models served here")
    def list_models(who: str = Depends(owner)):
        return {"models": [model_object()]}

    @app.get("/api/ai/models/{model_id}", tags=["models"], summary="Model details with json_request_schema")
    def get_model(model_id: str, who: str = Depends(owner)):
        check_model(model_id)
        return model_object()

    return app


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


class _Filter:
    """This connection's view: only the caller's generations, one event per terminal transition."""

    def __init__(self, g: Generations, ar, who: str, base: str):
        self.g, self.ar, self.who, self.base = g, ar, who, base
        self.metas: dict[str, dict | None] = {}
        self.emitted: dict[str, str] = {}

    async def event(self, eid: str, fields: dict) -> dict | None:
        kind, job = fields.get("kind"), fields.get("job")
        if kind not in EVENT_NAMES and kind != "video_queued":
            return None
        if job not in self.metas:
            if self.ar is not None:
                raw = await self.ar.hgetall(gen_key(job))
            else:
                raw = {_str(k): _str(v) for k, v in (await anyio.to_thread.run_sync(self.g.r.hgetall, gen_key(job))).items()}
            self.metas[job] = raw if raw and hmac.compare_digest(raw.get("owner", ""), self.who) else None
        meta = self.metas[job]
        if meta is None:
            return None
        if kind == "video_queued":  # a retry: its next end is news again
            self.emitted.pop(job, None)
            return None
        if self.emitted.get(job) == kind:  # a redelivered finalize repeats the transition
            return None
        self.emitted[job] = kind
        payload = self.g.completion(job, meta, self.base, fields)
        return {"event": EVENT_NAMES[kind], "id": eid, "data": json.dumps(payload, separators=(",", ":"))}


async def _hub_stream(g: Generations, ar, hub: EventHub, who: str, start: str, base: str):
    f = _Filter(g, ar, who, base)
    q = hub.subscribe()  # before the catch-up: whatever is written from now on is queued for us
    try:
        last = start
        while True:  # catch up from Redis
            entries = await ar.xrange(EVENTS, min="(" + last, max="+", count=500) if last != "0-0" else \
                await ar.xrange(EVENTS, min="-", max="+", count=500)
            for eid, fields in entries:
                last = eid
                if (out := await f.event(eid, fields)) is not None:
                    yield out
            if len(entries) < 500:
                break
        passed = id_key(last)
        while True:  # live
            if q.empty() and getattr(q, "_overflowed", False):
                return  # too slow: the client reconnects with Last-Event-ID and catches up from Redis
            try:
                eid, fields = await asyncio.wait_for(q.get(), 5)
            except asyncio.TimeoutError:
                continue
            if id_key(eid) <= passed:
                continue
            passed = id_key(eid)
            if (out := await f.event(eid, fields)) is not None:
                yield out
    finally:
        hub.unsubscribe(q)


async def _poll_stream(g: Generations, who: str, start: str, base: str):
    """Embedded mode (in-process Redis): poll the stream."""
    f = _Filter(g, None, who, base)
    last = start
    while True:
        got = await anyio.to_thread.run_sync(lambda: g.r.xread({EVENTS: last}, count=500))
        entries = [(_str(eid), {_str(k): _str(v) for k, v in fields.items()})
                   for _s, items in (got or []) for eid, fields in items]
        if not entries:
            await asyncio.sleep(0.5)
        for eid, fields in entries:
            last = eid
            if (out := await f.event(eid, fields)) is not None:
                yield out
