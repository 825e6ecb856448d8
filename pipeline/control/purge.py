"""Take a cancelled job's messages off the broker's queues, in bounded batches, so a job of
100,000 videos does not leave 100,000 dead messages ahead of every later job. Tasks check the
job's cancelled mark before they do anything (a running chunk at its next frame), so a message
missed here (reserved by a worker, sent meanwhile) only stops itself: this is about the queue, not
about correctness (``pipeline.control.lifecycle.cancel_job`` calls it).
"""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from pipeline.core.celery_app import queue_for
from pipeline.core.status import StatusStore

BATCH = 1000  # messages looked at per Redis call while purging
# kombu's Redis transport keeps a queue's priority levels in lists named queue + sep + level.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")

# KEYS[1]: a queue's list. ARGV: first index, how many to look at, a substring only this job's
# messages hold. Looks at one window and removes this job's messages from it in one atomic step
# (workers pop at the other end meanwhile); returns {removed, list length before, removed task ids}.
_PURGE_WINDOW = """
local window = redis.call('LRANGE', KEYS[1], ARGV[1], tonumber(ARGV[1]) + tonumber(ARGV[2]) - 1)
local marker = '\\0sam3v-purged\\0'
local removed = 0
local ids = {}
for i, message in ipairs(window) do
  if string.find(message, ARGV[3], 1, true) then
    redis.call('LSET', KEYS[1], tonumber(ARGV[1]) + i - 1, marker)
    removed = removed + 1
    -- Celery's correlation_id is the task id; matched, not decoded (cheaper over 100,000 messages).
    local id = string.match(message, '"correlation_id": "([^"]+)"')
    if id then table.insert(ids, id) end
  end
end
local length = redis.call('LLEN', KEYS[1])
if removed > 0 then redis.call('LREM', KEYS[1], removed, marker) end
return {removed, length, ids}
"""
EVENTS_PER_MESSAGE = 2000  # task-revoked events sent together (Celery's event receivers take lists)


@dataclass(frozen=True)
class Purged:
    messages: int  # this job's messages taken off the queues before any worker got them
    calls: int  # Redis calls made, each over at most ``batch`` messages


def purge_job(app: Celery, store: StatusStore, job_id: str, batch: int = BATCH) -> Purged:
    """Remove the job's queued messages from its lane's queues (probe and finalize: cpu; chunks: gpu).
    Each removed task is announced ``task-revoked`` (reason "cancelled"): Flower saw it sent, and
    would otherwise show it pending forever."""
    lane = store.job_spec(job_id).get("lane", "batch")
    removed, calls, ids = purge_queued(app, job_id, [queue_for("cpu", lane), queue_for("gpu", lane)], batch)
    announce_revoked(app, ids)
    return Purged(removed, calls)


def announce_revoked(app: Celery, task_ids: list[str]) -> None:
    """``task-revoked`` events for tasks no worker will ever receive, many to a message."""
    if not task_ids:
        return
    with app.connection_for_write() as conn:
        dispatcher = app.events.Dispatcher(conn, buffer_group=["task"], buffer_limit=EVENTS_PER_MESSAGE)
        try:
            for task_id in task_ids:
                dispatcher.send("task-revoked", uuid=task_id, terminated=False, signum=None, expired=False,
                                reason="cancelled")
            dispatcher.flush()
        finally:
            dispatcher.close()


def purge_queued(app: Celery, job_id: str, queues: list[str],
                 batch: int = BATCH) -> tuple[int, int, list[str]]:
    """Remove this job's messages from ``queues``, looking at ``batch`` messages per call; returns
    (messages removed, calls made, their task ids). Other jobs' messages keep their places. A broker
    other than Redis (the embedded mode's in-memory one) is left alone: its messages drop themselves."""
    # Every task's first argument is its job id; Celery writes the arguments' repr into the headers:
    # ['job', ...] for a list (the producer's send_task), ('job', ...) for a tuple (a probe's chain of
    # chunks). The quoted id alone matches both, and only this job's messages hold it.
    marker = f"'{job_id}'"
    removed = calls = 0
    ids: list[str] = []
    with app.connection_for_write() as conn:
        if conn.transport.driver_type != "redis":
            return 0, 0, []
        client = conn.default_channel.client
        window = client.register_script(_PURGE_WINDOW)
        for queue in queues:
            for key in (queue + suffix for suffix in _PRIORITY_SUFFIXES):
                start = 0
                while True:
                    gone, length, gone_ids = window(keys=[key], args=[start, batch, marker])
                    ids += [i.decode() if isinstance(i, bytes) else str(i) for i in gone_ids]
                    calls += 1
                    removed += int(gone)
                    start += batch - int(gone)
                    if start >= int(length) - int(gone):
                        break
    return removed, calls, ids
