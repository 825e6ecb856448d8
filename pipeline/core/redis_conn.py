"""One way to reach Redis: a real server when configured, an in-process one in embedded mode."""

from __future__ import annotations

import redis
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

from pipeline.core.settings import Settings

_EMBEDDED = None


def client_options(asyncio: bool = False) -> dict:
    """Options for every client of a real server (sync, or ``redis.asyncio`` with ``asyncio``).
    A pooled connection outlives a Redis restart and fails its next command ("Connection lost"):
    the command is retried once on a fresh connection, so the first request after a restart is
    answered, not a 500. One retry only: a server that stays down is reported, not waited for."""
    if asyncio:
        from redis.asyncio.retry import Retry
    else:
        from redis.retry import Retry
    return {"retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), 1),
            "retry_on_error": [ConnectionError, TimeoutError],
            "health_check_interval": 30, "socket_keepalive": True}


def connect(settings: Settings) -> redis.Redis:
    url = settings.effective_redis_url
    if url:
        return redis.Redis.from_url(url, **client_options())
    global _EMBEDDED
    import fakeredis  # embedded mode only: one in-process server shared by every client here

    if _EMBEDDED is None:
        _EMBEDDED = fakeredis.FakeServer()
    return fakeredis.FakeRedis(server=_EMBEDDED)
