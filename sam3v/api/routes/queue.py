"""``queue``: the async queue. Queue generations, list them, read one (the route every polling client
hits), cancel, retry, and download an output when storage cannot hand out presigned URLs."""

from __future__ import annotations

import hmac
import json
from typing import Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response

from sam3v.api.auth import owner
from sam3v.api.deps import JSON_BODY_MAX, generations, submit
from sam3v.api.errors import APIError
from sam3v.api.schemas import GenerationRequest
from sam3v.api.service import VIDEO_ID, Generations, check_generation_id, gen_key

router = APIRouter(tags=["queue"])
REPORT_HEADERS = {"Content-Security-Policy": "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
                                             "script-src 'unsafe-inline'", "X-Content-Type-Options": "nosniff"}


# An output's file type -> what a browser is told it is.
MEDIA_TYPES = {"json": "application/json", "mp4": "video/mp4", "mkv": "video/x-matroska", "zip": "application/zip",
               "txt": "text/plain; charset=utf-8"}

@router.post("/api/ai/queue", summary="Queue generations", max_body_size=JSON_BODY_MAX)
def enqueue(body: GenerationRequest, request: Request, who: str = Depends(owner)):
    """Queue `num_generations` generations; answers their ids with status `queued`."""
    ids = submit(generations(request), body, who, str(request.base_url))
    return {"generations": [{"generation_id": i, "status": "queued", "model": body.model} for i in ids]}


@router.get("/api/ai/queue", summary="List your generations")
def list_generations(request: Request, who: str = Depends(owner),
                     status: Literal["queued", "processing", "succeeded", "failed", "cancelled"] | None = None,
                     model: str | None = None, limit: int = Query(50, ge=1, le=500)):
    """The caller's generations, newest first, optionally filtered by status and model."""
    return {"generations": generations(request).list(who, str(request.base_url), status, model, limit)}


@router.get("/api/ai/queue/{generation_id}", summary="A generation's status and results")
async def get_generation(generation_id: str, request: Request, who: str = Depends(owner)):
    """Status (queued, processing, succeeded, failed, cancelled); `result_url` (overlay if apply_mask,
    else mask) and `result_urls` once succeeded; `error_message` once failed."""
    check_generation_id(generation_id)
    g = generations(request)
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


def _change(request: Request, generation_id: str, who: str, action) -> dict:
    check_generation_id(generation_id)
    g = generations(request)
    meta = g.meta(generation_id, who)  # 404 before anything changes for someone else's id
    action(g, generation_id)
    return g.document(generation_id, meta, str(request.base_url))


@router.delete("/api/ai/queue/{generation_id}", summary="Cancel a generation")
def cancel_generation(generation_id: str, request: Request, who: str = Depends(owner)):
    """Stop a queued or running generation; it stays listed with status `cancelled`."""
    return _change(request, generation_id, who, Generations.cancel)


@router.post("/api/ai/queue/{generation_id}/retry", summary="Retry a failed or cancelled generation")
def retry_generation(generation_id: str, request: Request, who: str = Depends(owner)):
    """Queue a failed or cancelled generation again (409 otherwise); same id, new attempt."""
    return _change(request, generation_id, who, Generations.retry)


@router.get("/api/ai/queue/{generation_id}/files/{name}", summary="Download an output", response_class=Response)
def download(generation_id: str, name: str, request: Request, who: str = Depends(owner)):
    """An output (`overlay`, `mask` or `masks`) of a succeeded generation. `result_urls` point here
    when storage is a local directory; with S3 they are presigned URLs instead. `report.html`: the
    generation's report (one self-contained page), once it has ended, succeeded or not."""
    check_generation_id(generation_id)
    g = generations(request)
    g.meta(generation_id, who)
    key, local = g.file(generation_id, name)
    if key.endswith(".html"):
        # Our page, with our inline style and script only: nothing else may load or run in it.
        return Response(g.storage.get_bytes(key), media_type="text/html; charset=utf-8", headers=REPORT_HEADERS)
    media = MEDIA_TYPES.get(key.rsplit(".", 1)[-1], "application/octet-stream")
    if local is not None:
        return FileResponse(local, media_type=media, filename=local.name)
    return Response(g.storage.get_bytes(key), media_type=media)


@router.get("/api/ai/queue/{generation_id}/files/objects/{object_file}", summary="Download one object's mask video",
            response_class=Response)
def download_object(generation_id: str, object_file: str, request: Request, who: str = Depends(owner)):
    """One object's lossless mask video of the ``objects`` export (``<object id>.mkv``); ``result_urls``
    lists each as ``objects/<id>.mkv``."""
    return download(generation_id, f"objects/{object_file}", request, who)
