"""``sync``: generate and wait. Queues like the async queue, then holds the request until every
generation ends (or SAM3V_API_SYNC_TIMEOUT passes) and answers the hosted model's sync body."""

from __future__ import annotations

import asyncio
import base64
import time

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from sam3v.api.auth import owner
from sam3v.api.deps import JSON_BODY_MAX, generations, submit
from sam3v.api.errors import error_body
from sam3v.api.schemas import GenerateRequest
from sam3v.api.service import TERMINAL, VIDEO_ID, Generations
from pipeline.core.layout import VideoKeys

router = APIRouter(tags=["sync"])


@router.post("/api/ai/videos/generate", summary="Generate and wait", max_body_size=JSON_BODY_MAX)
async def generate(body: GenerateRequest, request: Request, who: str = Depends(owner)):
    """Blocks until the generation ends (at most SAM3V_API_SYNC_TIMEOUT seconds, default 600,
    then 504 with the generation_id: poll it with GET /api/ai/queue/{id})."""
    g = generations(request)
    ids = await run_in_threadpool(submit, g, body, who, str(request.base_url))
    if not await _wait(g, ids):
        return JSONResponse(error_body("timeout", f"generation {ids[0]} did not finish within "
                                       f"{g.settings.api_sync_timeout:.0f} s; poll GET /api/ai/queue/{ids[0]}",
                                       generation_id=ids[0], generation_ids=ids), 504)
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
        answer["b64_json"] = await _main_output_b64(g, first)
        answer["data"] = [{"b64_json": answer["b64_json"]}]
    else:
        answer["data"] = [{"url": d["result_url"], "generation_id": d["generation_id"]} for d in docs]
    if len(docs) > 1:
        answer["generations"] = docs
    return answer


async def _wait(g: Generations, ids: list[str]) -> bool:
    """Whether every generation ended before the sync deadline."""
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
            return False
        await asyncio.sleep(0.25)
    return True


async def _main_output_b64(g: Generations, doc: dict) -> str:
    """The output ``result_url`` names, read from storage: the client asked for bytes, not a link."""
    name = [n for n, u in doc["result_urls"].items() if u == doc["result_url"]][0]
    data = await run_in_threadpool(g.storage.get_bytes, VideoKeys(doc["generation_id"], VIDEO_ID).output(name))
    return base64.b64encode(data).decode()
