"""Server-sent events of a caller's generations, read from the Redis events stream: where a
connection starts (``Last-Event-ID`` or the newest event), which events it may see (``_Filter``),
and the two ways of reading: through the process's ``EventHub`` (a real Redis) or by polling (the
in-process Redis of embedded mode, which the async client cannot reach)."""

from __future__ import annotations

import asyncio
import hmac
import json
import re

import anyio
from fastapi.concurrency import run_in_threadpool

from sam3v.api.errors import APIError
from sam3v.api.hub import EventHub, id_key
from sam3v.api.service import EVENT_NAMES, Generations, gen_key
from pipeline.core.status import EVENTS

_STREAM_ID = re.compile(r"^\d+(-\d+)?$")
_U64_MAX = 2**64 - 1


def _str(value) -> str:
    return value.decode() if isinstance(value, bytes) else value


def resume_id(last_event_id: str | None) -> str | None:
    """The stream id a reconnecting client last saw; 422 for a header that is not a stream id
    (Redis ids are two unsigned 64-bit numbers: a bigger one fails every XRANGE)."""
    if not last_event_id:
        return None
    value = last_event_id.strip()
    if not _STREAM_ID.match(value) or max(id_key(value)) > _U64_MAX:
        raise APIError(422, "invalid_request", "Last-Event-ID: not an event id", field="Last-Event-ID")
    return value


async def newest_id(g: Generations, ar) -> str:
    """The newest id in the stream, so a new connection sees what happens from now on; fixed before
    the response starts."""
    newest = await ar.xrevrange(EVENTS, count=1) if ar is not None else \
        await run_in_threadpool(g.r.xrevrange, EVENTS, "+", "-", 1)
    return _str(newest[0][0]) if newest else "0-0"


async def start_id(g: Generations, ar, last_event_id: str | None) -> str:
    """Where a connection starts: after ``Last-Event-ID``, or after the newest event when there is
    none or when it is past the newest. Such an id is what a client holds after the stream was
    reset (Redis restored from an older snapshot, a fresh deployment); EventSource clients resend
    it on every reconnect and cannot change it, so a 422 would lock them out for good, and
    starting there would skip every event until the stream caught up. From the newest event they
    get everything from now on, which is all there is past their id."""
    resumed = resume_id(last_event_id)
    newest = await newest_id(g, ar)
    if resumed is None or id_key(resumed) > id_key(newest):
        return newest
    return resumed


def event_stream(g: Generations, ar, hub: EventHub | None, who: str, start: str, base: str):
    """The SSE messages for ``who`` after stream id ``start``; ``ar`` None means embedded mode."""
    return _hub_stream(g, ar, hub, who, start, base) if ar is not None else _poll_stream(g, who, start, base)


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
