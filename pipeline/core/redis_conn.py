"""One way to reach Redis: a real server when configured, an in-process one in embedded mode."""

from __future__ import annotations

import redis

from pipeline.core.settings import Settings

_EMBEDDED = None


def connect(settings: Settings) -> redis.Redis:
    url = settings.effective_redis_url
    if url:
        return redis.Redis.from_url(url, health_check_interval=30, socket_keepalive=True)
    global _EMBEDDED
    import fakeredis  # embedded mode only: one in-process server shared by every client here

    if _EMBEDDED is None:
        _EMBEDDED = fakeredis.FakeServer()
    return fakeredis.FakeRedis(server=_EMBEDDED)
