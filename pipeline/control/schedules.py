"""Nightly jobs: schedules kept in Redis by celery-redbeat (safe with several beat processes).

Each firing runs the ``sam3v.scheduled_submit`` task, which submits the manifest with the firing
time as idempotency key: two firings of the same slot (two beats, a redelivery) make one job.

``sam3v beat`` runs ``HeartbeatScheduler``: RedBeat's scheduler that also says in Redis, at every
tick, that a beat holds the lock and fires schedules; ``schedule list`` and ``add`` warn when none
has been seen for two of its intervals (a schedule that nobody fires looked fine). Next runs are
computed as RedBeat decides them (``next_run``), not from celery's estimate.
"""

from __future__ import annotations

import json
import math
import time
from datetime import datetime, timedelta, timezone

from celery import Celery
from celery.schedules import crontab, schedule
from redbeat import RedBeatSchedulerEntry
from redbeat.schedulers import RedBeatConfig, RedBeatScheduler, get_redis

from pipeline.control.manifest import load_manifest_bytes
from pipeline.control.producer import submit_manifest
from pipeline.core.errors import InputError
from pipeline.core.specs import DEFAULT_MAX_PROMPTS
from pipeline.core.status import StatusStore

SCHEDULED_SUBMIT = "sam3v.scheduled_submit"
PREFIX = "sam3v:redbeat:"
HEARTBEAT = "sam3v:beat:heartbeat"
BEAT_INTERVAL_S = 5  # beat_max_loop_interval: a beat ticks at least this often


def configure(app: Celery, redis_url: str) -> None:
    # redbeat_redis_options set, even empty: without it RedBeat falls back to the broker's transport
    # options (which it does not pass to its client anyway) and warns so on every schedule command
    # and beat start. Empty keeps what it did: a client with default options.
    app.conf.update(redbeat_redis_url=redis_url, redbeat_key_prefix=PREFIX,
                    beat_scheduler="pipeline.control.schedules:HeartbeatScheduler", redbeat_redis_options={},
                    redbeat_lock_timeout=60, beat_max_loop_interval=BEAT_INTERVAL_S)
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


class HeartbeatScheduler(RedBeatScheduler):
    """RedBeat's scheduler, which also publishes that it ticks (only the beat holding the lock does)."""

    def tick(self, *args, **kwargs):
        interval = super().tick(*args, **kwargs)
        try:
            get_redis(self.app).set(HEARTBEAT, json.dumps({"time": time.time(), "interval": self.max_interval}),
                                    ex=max(1, int(math.ceil(2 * self.max_interval))))
        except Exception as err:  # a monitoring signal only: never a reason to stop firing
            from celery.utils.log import get_logger

            get_logger(__name__).warning("beat heartbeat not published: %s", err)
        return interval


def beat_warning(app: Celery) -> str | None:
    """Why schedules will not fire now (no beat seen in Redis for two of its intervals), or None."""
    if get_redis(app).exists(HEARTBEAT):
        return None
    return (f"no `sam3v beat` has been seen in Redis for {2 * BEAT_INTERVAL_S} s: schedules fire only while one "
            "runs (start `sam3v beat`; several may run, one fires)")


def _aware(when: datetime) -> datetime:
    return when.replace(tzinfo=timezone.utc) if when.tzinfo is None else when.astimezone(timezone.utc)


def next_run(cron: str | None, every: float | None, last_run_at: datetime, now: datetime) -> tuple[datetime, bool]:
    """When beat fires the schedule next, and whether that is overdue (then beat fires it at its
    next tick: the answer is ``now``). RedBeat asks ``schedule.is_due(last_run_at)``: due once the
    schedule's next time after ``last_run_at`` has come, whatever the time now; ``last_run_at`` is
    the moment of the last firing, or the schedule's creation before the first one."""
    last, now = _aware(last_run_at), _aware(now)
    if every:
        due = last + timedelta(seconds=every)
    else:
        when = parse_cron(cron)
        start, ends_in, _ = when.remaining_delta(last)
        due = _aware(start + ends_in)
    return (due, False) if due >= now else (now, True)


def list_entries(app: Celery, now: datetime | None = None) -> list[dict]:
    now = now or datetime.now(timezone.utc)
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
        # RedBeat's own due_at adds a delta measured from now to the last run: wrong by their gap.
        due, overdue = next_run(cron, every, entry.last_run_at, now) if entry.last_run_at else (now, True)
        out.append({"name": name, "manifest": manifest, "prompt": prompt, "cron": cron, "every": every,
                    "last_run_at": _aware(entry.last_run_at).isoformat() if fired else None,
                    "next_run_at": due.isoformat(), "overdue": overdue, "runs": int(entry.total_run_count or 0)})
    return out
