"""Nightly jobs: schedules kept in Redis by celery-redbeat (safe with several beat processes).

Each firing runs the ``sam3v.scheduled_submit`` task, which submits the manifest with the firing
time as idempotency key: two firings of the same slot (two beats, a redelivery) make one job.
"""

from __future__ import annotations

import math
import time
from datetime import timedelta

from celery import Celery
from celery.schedules import crontab, schedule
from redbeat import RedBeatSchedulerEntry
from redbeat.schedulers import RedBeatConfig

from pipeline.control.manifest import load_manifest_bytes
from pipeline.control.producer import submit_manifest
from pipeline.core.errors import InputError
from pipeline.core.specs import DEFAULT_MAX_PROMPTS
from pipeline.core.status import StatusStore

SCHEDULED_SUBMIT = "sam3v.scheduled_submit"
PREFIX = "sam3v:redbeat:"


def configure(app: Celery, redis_url: str) -> None:
    # redbeat_redis_options set, even empty: without it RedBeat falls back to the broker's transport
    # options (which it does not pass to its client anyway) and warns so on every schedule command
    # and beat start. Empty keeps what it did: a client with default options.
    app.conf.update(redbeat_redis_url=redis_url, redbeat_key_prefix=PREFIX, beat_scheduler="redbeat.RedBeatScheduler",
                    redbeat_redis_options={}, redbeat_lock_timeout=60, beat_max_loop_interval=5)
    app.conf.task_routes = {**(app.conf.task_routes or {}), SCHEDULED_SUBMIT: {"queue": "cpu"}}


def parse_cron(expr: str) -> crontab:
    fields = expr.split()
    if len(fields) != 5:
        raise InputError(f"--cron {expr!r}: expected 5 fields (minute hour day-of-month month day-of-week)")
    minute, hour, dom, month, dow = fields
    try:
        return crontab(minute=minute, hour=hour, day_of_month=dom, month_of_year=month, day_of_week=dow)
    except (ValueError, TypeError) as err:
        raise InputError(f"--cron {expr!r}: {err}") from None


def slot(cron: str | None, every: float | None, now: float | None = None) -> str:
    """The firing's identity: its minute for cron schedules, its interval slot for --every."""
    now = time.time() if now is None else now
    if every:
        return str(int(math.floor(now / every) * every))
    return time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime(now))


def fire(app: Celery, store: StatusStore, name: str, manifest: str, prompt: str | None, cron: str | None,
         every: float | None, max_prompts: int = DEFAULT_MAX_PROMPTS) -> str:
    """One firing: submit the manifest, keyed by the firing's slot; returns the job id."""
    done = submit_manifest(app, store, load_manifest_bytes(manifest), manifest, name=f"{name} (scheduled)",
                           default_prompt=prompt, idempotency_key=f"schedule:{name}:{slot(cron, every)}",
                           max_prompts=max_prompts)
    return done.job_id


def timing(cron: str | None, every: float | None) -> crontab | schedule:
    """The schedule of ``--cron`` or ``--every`` (exactly one), or ``InputError`` naming the flag."""
    if bool(cron) == bool(every):
        raise InputError("give exactly one of --cron or --every")
    return parse_cron(cron) if cron else schedule(every)


def add(app: Celery, name: str, manifest: str, prompt: str | None, cron: str | None, every: float | None) -> None:
    when = timing(cron, every)
    entry = RedBeatSchedulerEntry(name, SCHEDULED_SUBMIT, when, args=[name, manifest, prompt, cron, every], app=app)
    entry.save()


def remove(app: Celery, name: str) -> None:
    try:
        RedBeatSchedulerEntry.from_key(RedBeatConfig(app).key_prefix + name, app=app).delete()
    except KeyError:
        raise InputError(f"no such schedule: {name}") from None


def list_entries(app: Celery) -> list[dict]:
    from redbeat.schedulers import get_redis

    r = get_redis(app)
    out = []
    for key in sorted(r.zrange(RedBeatConfig(app).schedule_key, 0, -1)):
        key = key.decode() if isinstance(key, bytes) else key
        try:
            entry = RedBeatSchedulerEntry.from_key(key, app=app)
        except KeyError:
            continue
        if entry.task != SCHEDULED_SUBMIT or not entry.args or len(entry.args) != 5:
            # Not one of ours, or what a running beat wrote back (its last-run time) for a schedule
            # removed under it: a key with no definition.
            continue
        name, manifest, prompt, cron, every = entry.args
        # A new entry's last_run_at is its creation time (so that it first fires at its next slot,
        # not at once); only a firing counts runs: before one, there was no last run.
        fired = bool(entry.total_run_count) and entry.last_run_at is not None
        due = entry.due_at
        if due is not None:  # celery estimates it from "now": a cron slot comes out up to a second early
            due = (due + timedelta(seconds=30)).replace(second=0, microsecond=0) if cron else \
                (due + timedelta(milliseconds=500)).replace(microsecond=0)
        out.append({"name": name, "manifest": manifest, "prompt": prompt, "cron": cron, "every": every,
                    "last_run_at": entry.last_run_at.isoformat() if fired else None,
                    "next_run_at": due.isoformat() if due else None, "runs": int(entry.total_run_count or 0)})
    return out
