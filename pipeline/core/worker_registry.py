"""What each live worker tells the control plane about itself, kept in Redis while it runs.

A worker publishes one record at start (its node name, queues and storage settings) under
``sam3v:worker:{node}`` with a short TTL, and refreshes it from a thread while it lives; a worker
that dies stops refreshing and its record expires. ``sam3v submit`` compares its own storage
settings with these records (a submitter pointing at another bucket than the workers is told so)
and ``sam3v api`` reports when no live worker serves the interactive queues.

A worker that takes itself out of service (its model, GPU, disk or storage is at fault:
``workers.jobs.service``) says why in its record, kept OUT_OF_SERVICE_TTL_S after it exits so that an
operator (``GET /health``, ``redis-cli``) sees the reason; such a record serves no queue.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

PREFIX = "sam3v:worker:"
TTL_S = 30  # a dead worker's record is gone within this
REFRESH_S = 10
OUT_OF_SERVICE_TTL_S = 3600


@dataclass(frozen=True)
class WorkerRecord:
    node: str
    queues: list[str]
    storage_url: str
    endpoint_url: str | None  # AWS_ENDPOINT_URL of the worker (None: boto3's default)
    pid: int
    started: float
    out_of_service: str | None = None  # why the worker stopped taking tasks (it exits non-zero)


def storage_endpoint() -> str | None:
    """The S3 endpoint this process talks to (boto3 reads the same variable)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _key(record: WorkerRecord) -> str:
    return f"{PREFIX}{record.node}:{record.pid}"


# A live record's refresh (or withdrawal at exit) must not erase an out-of-service reason that a
# process of the same worker (a prefork child) wrote meanwhile.
_UNLESS_OUT = """
local cur = redis.call('GET', KEYS[1])
if cur and string.find(cur, '"out_of_service": "', 1, true) then return 0 end
if ARGV[1] == '' then redis.call('DEL', KEYS[1]) else redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2]) end
return 1
"""


def publish(r, record: WorkerRecord) -> None:
    r.eval(_UNLESS_OUT, 1, _key(record), json.dumps(asdict(record)), TTL_S)


def withdraw(r, record: WorkerRecord) -> None:
    r.eval(_UNLESS_OUT, 1, _key(record), "", 0)


def mark_out_of_service(r, record: WorkerRecord, reason: str) -> None:
    """The worker's record says why it stopped; it outlives the worker for OUT_OF_SERVICE_TTL_S."""
    out = WorkerRecord(**{**asdict(record), "out_of_service": reason})
    r.set(_key(out), json.dumps(asdict(out)), ex=OUT_OF_SERVICE_TTL_S)


def in_service(records: list[WorkerRecord]) -> list[WorkerRecord]:
    return [w for w in records if not w.out_of_service]


def out_of_service_warnings(records: list[WorkerRecord]) -> list[str]:
    """Why each worker out of service stopped (no host named: ``/health`` is open without a key)."""
    return list(dict.fromkeys(f"a worker took itself out of service: {w.out_of_service}"
                              for w in records if w.out_of_service))


def live_workers(r) -> list[WorkerRecord]:
    """Every worker whose record has not expired."""
    keys = sorted(r.scan_iter(match=f"{PREFIX}*", count=500))
    if not keys:
        return []
    records = []
    for raw in r.mget(keys):
        if raw is None:  # expired between the scan and the read
            continue
        try:
            records.append(WorkerRecord(**json.loads(raw)))
        except (TypeError, ValueError):
            continue  # a record of another version: not ours to read
    return records


def keep_published(r, record: WorkerRecord, stop: threading.Event | None = None) -> threading.Thread:
    """Publish now, then refresh every REFRESH_S from a daemon thread until ``stop`` is set."""
    publish(r, record)
    stop = stop or threading.Event()

    def refresh() -> None:
        while not stop.wait(REFRESH_S):
            try:
                publish(r, record)
            except Exception as err:  # Redis out of reach for a while: the next refresh tries again
                log.warning("worker record not refreshed: %s", err)
        try:
            withdraw(r, record)
        except Exception:
            pass

    thread = threading.Thread(target=refresh, name="sam3v-worker-record", daemon=True)
    thread.start()
    return thread


def new_record(node: str, queues: list[str], storage_url: str) -> WorkerRecord:
    return WorkerRecord(node=node, queues=list(queues), storage_url=storage_url, endpoint_url=storage_endpoint(),
                        pid=os.getpid(), started=time.time())


def unserved(records: list[WorkerRecord], queues) -> list[str]:
    """Which of ``queues`` no live worker in service consumes."""
    consumed = {q for r in in_service(records) for q in r.queues}
    return [q for q in queues if q not in consumed]


def interactive_warning(r) -> str | None:
    """Why API generations would wait forever now (no live worker on an interactive queue), or None."""
    from pipeline.core.celery_app import ALL_QUEUES
    from pipeline.core.queue_order import is_interactive

    missing = unserved(live_workers(r), [q for q in ALL_QUEUES if is_interactive(q)])
    if not missing:
        return None
    return (f"no live worker consumes {', '.join(missing)}: API generations stay queued until one does "
            "(`sam3v worker` with no --queues consumes every queue)")
