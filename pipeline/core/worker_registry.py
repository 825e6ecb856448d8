"""What each live worker tells the control plane about itself, kept in Redis while it runs.

A worker publishes one record at start (its node name, queues and storage settings) under
``sam3v:worker:{node}`` with a short TTL, and refreshes it from a thread while it lives; a worker
that dies stops refreshing and its record expires. ``sam3v submit`` compares its own storage
settings with these records (a submitter pointing at another bucket than the workers is told so)
and ``sam3v api`` reports when no live worker serves the interactive queues.
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


@dataclass(frozen=True)
class WorkerRecord:
    node: str
    queues: list[str]
    storage_url: str
    endpoint_url: str | None  # AWS_ENDPOINT_URL of the worker (None: boto3's default)
    pid: int
    started: float


def storage_endpoint() -> str | None:
    """The S3 endpoint this process talks to (boto3 reads the same variable)."""
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


def _key(record: WorkerRecord) -> str:
    return f"{PREFIX}{record.node}:{record.pid}"


def publish(r, record: WorkerRecord) -> None:
    r.set(_key(record), json.dumps(asdict(record)), ex=TTL_S)


def withdraw(r, record: WorkerRecord) -> None:
    r.delete(_key(record))


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
    """Which of ``queues`` no live worker consumes."""
    consumed = {q for r in records for q in r.queues}
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
