"""How long a finished job's records stay in Redis, and removing them sooner (`sam3v jobs prune`).

A job's Redis records (its hash, items, videos, counts, rejected lines, idempotency key, chunk
delivery counts and, for an HTTP API generation, its metadata) get a time to live of
``SAM3V_JOB_RETENTION`` when the job ends, and lose it when a retry reopens the job. Results stay in
storage: only Redis forgets the job. Jobs that have not ended are never touched.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from pipeline.core.status import FINAL_JOB_STATES, StatusStore, _k, _s

DEFAULT_RETENTION = 30 * 86400.0
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str | float | int) -> float:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds -> seconds."""
    if isinstance(text, (int, float)):
        seconds = float(text)
    else:
        found = _DURATION.fullmatch(str(text))
        if not found:
            raise ValueError(f"{text!r} is not a duration: write a number with an optional unit s, m, h, d or w "
                             "(30d, 12h, 3600)")
        seconds = float(found.group(1)) * _UNITS[found.group(2).lower()]
    if seconds < 0:
        raise ValueError(f"{text!r}: a duration cannot be negative")
    return seconds


# The HTTP API's generation metadata and per-owner index (sam3v/api/service.py's gen_key and
# owner_key; tests/test_retention.py checks they agree). The core cannot import the API layer.
def generation_key(job_id: str) -> str:
    return f"sam3v:gen:{job_id}"


def generation_owner_key(owner: str) -> str:
    return f"sam3v:gen:owner:{owner}"


def idempotency_key(key: str) -> str:
    return _k("idem", key)


def _record_keys(r, job_id: str) -> list[str]:
    """Every Redis key that belongs to this job alone."""
    keys = [_k("job", job_id), _k("job", job_id, "items"), _k("job", job_id, "videos"),
            _k("job", job_id, "counts"), _k("job", job_id, "rejected"), _k("job", job_id, "order"),
            _k("job", job_id, "idem"),
            generation_key(job_id)]
    held = r.get(_k("job", job_id, "idem"))
    if held:
        keys.append(idempotency_key(_s(held)))
    keys += [_k("deliveries", job_id, _s(vid)) for vid in r.hkeys(_k("job", job_id, "videos"))]
    return keys


def expire_job(r, job_id: str, retention: float) -> None:
    """The job ended: its records go after ``retention`` seconds (0: kept until pruned)."""
    if retention <= 0:
        return
    pipe = r.pipeline(transaction=False)
    for key in _record_keys(r, job_id):
        pipe.expire(key, max(1, int(retention)))
    pipe.execute()
    forget_expired(r, time.time() - retention)


def keep_job(r, job_id: str) -> None:
    """The job runs again (a retry): its records stay until it ends again."""
    pipe = r.pipeline(transaction=False)
    for key in _record_keys(r, job_id):
        pipe.persist(key)
    pipe.execute()


def forget_expired(r, created_before: float, limit: int = 1000) -> int:
    """Drop index entries of jobs whose records expired: a job created before ``created_before``
    may have ended long enough ago. Bounded: the next ending job goes on."""
    old = [_s(j) for j in r.zrangebyscore(_k("jobs"), "-inf", created_before, start=0, num=limit)]
    pipe = r.pipeline(transaction=False)
    for job_id in old:
        pipe.exists(_k("job", job_id))
    gone = [job_id for job_id, exists in zip(old, pipe.execute()) if not exists]
    if gone:
        r.zrem(_k("jobs"), *gone)
    return len(gone)


@dataclass(frozen=True)
class Pruned:
    job_id: str
    name: str
    status: str
    ended: float


def ended_at(r, job_id: str) -> float | None:
    """When the job's last video ended; None while it runs."""
    raw = r.hget(_k("job", job_id), "completed")
    return float(raw) if raw else None


def prune(store: StatusStore, older_than: float, now: float | None = None, dry_run: bool = False) -> list[Pruned]:
    """Delete the records of jobs that ended more than ``older_than`` seconds ago; running jobs
    stay whatever their age. Returns what was (or, with ``dry_run``, would be) removed."""
    r, now = store.r, time.time() if now is None else now
    cutoff = now - older_than
    removed = []
    # A job ends after it is created: only jobs created before the cutoff can have ended before it.
    for raw in r.zrangebyscore(_k("jobs"), "-inf", cutoff):
        job_id = _s(raw)
        try:
            summary = store.summary(job_id)
        except KeyError:  # expired already: only its index entry is left
            if not dry_run:
                r.zrem(_k("jobs"), job_id)
            continue
        ended = ended_at(r, job_id)
        if summary.status not in FINAL_JOB_STATES or ended is None or ended > cutoff:
            continue
        if not dry_run:
            _delete(r, job_id)
        removed.append(Pruned(job_id, summary.name, summary.status, ended))
    return removed


def _delete(r, job_id: str) -> None:
    owner = r.hget(generation_key(job_id), "owner")
    keys = _record_keys(r, job_id)
    pipe = r.pipeline(transaction=True)
    pipe.delete(*keys)
    pipe.zrem(_k("jobs"), job_id)
    if owner:
        pipe.zrem(generation_owner_key(_s(owner)), job_id)
    pipe.execute()
