"""One blocking XREAD per API process, fanned out to every open SSE connection.

A connection subscribes first, then catches up from its own position (``Last-Event-ID`` or the
newest event when it connected) with XRANGE, then takes live events from its queue, skipping ids
it has already passed: nothing is lost or repeated across the switch. The hub holds no state beyond
the open connections; a slow consumer whose queue overflows is disconnected and resumes with
``Last-Event-ID`` from Redis.
"""

from __future__ import annotations

import asyncio
import logging

from pipeline.core.status import EVENTS

log = logging.getLogger(__name__)
QUEUE_MAX = 10_000


def id_key(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


class Overflow(Exception):
    pass


class EventHub:
    def __init__(self, reader_client):
        self.r = reader_client  # a client of its own: its connection sits in XREAD BLOCK
        self.subscribers: set[asyncio.Queue] = set()
        self.task: asyncio.Task | None = None

    def subscribe(self) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(QUEUE_MAX)
        self.subscribers.add(q)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self.subscribers.discard(q)

    async def _run(self) -> None:
        newest = await self.r.xrevrange(EVENTS, count=1)
        last = newest[0][0] if newest else "0-0"
        while self.subscribers:
            try:
                got = await self.r.xread({EVENTS: last}, block=5_000, count=1000) or []
            except asyncio.CancelledError:
                raise
            except Exception as err:  # Redis restarting: keep our position, try again
                log.warning("event hub: %s; retrying", err)
                await asyncio.sleep(1)
                continue
            for _stream, entries in got:
                for eid, fields in entries:
                    last = eid
                    for q in list(self.subscribers):
                        try:
                            q.put_nowait((eid, fields))
                        except asyncio.QueueFull:
                            self.subscribers.discard(q)
                            q._overflowed = True  # type: ignore[attr-defined]

    async def close(self) -> None:
        if self.task:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):
                pass
