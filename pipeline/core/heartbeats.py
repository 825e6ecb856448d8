"""Which videos have work in flight: the evidence the sweeper reads before it requeues lost work.

Two sorted sets, member ``{job}\\t{video}``:
- ``sam3v:heartbeats``, scored by the last sign of life of the video's current task: its start and,
  while a chunk runs, every few frames.
- ``sam3v:pending``, scored by when the video's next task was published and not yet started (a chain
  step waiting in a queue can wait for hours behind a big batch: that is not lost work).

A ``processing`` video with an old heartbeat and no pending task has lost its work: a worker died
with it (kill -9, OOM, a host gone) or its task could not record its outcome (Redis down at the
wrong moment). A pending mark counts only when it is newer than the last heartbeat: the mark is
scored by the time the message was about to be published and written just after it, so a worker
that started the task in between (and beat) is not mistaken for a task still waiting. Redis's AOF
loses at most a suffix of the command log, so a surviving mark always has its message.
"""

from __future__ import annotations

import time

HEARTBEATS = "sam3v:heartbeats"
PENDING = "sam3v:pending"


def _member(job_id: str, video_id: str) -> str:
    return f"{job_id}\t{video_id}"


def _split(member) -> tuple[str, str]:
    text = member.decode() if isinstance(member, bytes) else member
    job_id, video_id = text.split("\t", 1)
    return job_id, video_id


class Heartbeats:
    def __init__(self, redis_client):
        self.r = redis_client

    def beat(self, job_id: str, video_id: str, now: float | None = None) -> None:
        self.r.zadd(HEARTBEATS, {_member(job_id, video_id): time.time() if now is None else now})

    def pending(self, job_id: str, video_id: str, published: float) -> None:
        """The video's next task was published at ``published`` (taken before publishing)."""
        self.r.zadd(PENDING, {_member(job_id, video_id): published})

    def forget(self, job_id: str, video_id: str) -> None:
        """The video ended (or was requeued from its first task): nothing of it is in flight."""
        pipe = self.r.pipeline(transaction=False)
        pipe.zrem(HEARTBEATS, _member(job_id, video_id))
        pipe.zrem(PENDING, _member(job_id, video_id))
        pipe.execute()

    def silent_since(self, cutoff: float, limit: int = 1000) -> list[tuple[str, str]]:
        """Videos whose last heartbeat is older than ``cutoff`` and that have no task published
        after it."""
        stale = self.r.zrangebyscore(HEARTBEATS, "-inf", cutoff, start=0, num=limit, withscores=True)
        if not stale:
            return []
        pipe = self.r.pipeline(transaction=False)
        for member, _beat in stale:
            pipe.zscore(PENDING, member)
        return [_split(member) for (member, beat), published in zip(stale, pipe.execute())
                if published is None or float(published) <= beat]
