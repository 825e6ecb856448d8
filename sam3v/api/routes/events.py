"""``events``: the SSE route. The stream itself (positions, filtering, hub or polling) is
``sam3v.api.sse_reader``."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Header, Request
from sse_starlette.sse import EventSourceResponse

from sam3v.api.auth import owner
from sam3v.api.deps import generations
from sam3v.api.sse_reader import event_stream, start_id

router = APIRouter(tags=["events"])


@router.get("/api/events", summary="Server-sent events for your generations")
async def events(request: Request, who: str = Depends(owner),
                 last_event_id: str | None = Header(None, alias="Last-Event-ID")):
    """`event: media_generation_completed` / `media_generation_failed` / `media_generation_cancelled`,
    `data:` one-line JSON with `generation_id`, `status`, `result_url` or `error_message`. The event id is
    the Redis stream id: reconnect with `Last-Event-ID` to resume without loss. Comment pings keep idle
    connections open."""
    g = generations(request)
    ar = request.app.state.aredis
    start = await start_id(g, ar, last_event_id)
    # The hub exists only beside the async client (a real Redis): embedded mode polls instead.
    hub = request.app.state.hub if ar is not None else None
    stream = event_stream(g, ar, hub, who, start, str(request.base_url))
    return EventSourceResponse(stream, ping=g.settings.api_sse_ping, sep="\n",
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
