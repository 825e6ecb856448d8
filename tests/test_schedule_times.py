"""`schedule list`'s next run, computed as RedBeat decides a firing (issue 20): from the schedule and
the last run, with a frozen clock at minute boundaries, before and after firings, across midnight
(UTC has no DST). The real beat's firing times are compared in tests/test_monitoring.py."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from pipeline.control.schedules import next_run


def t(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


@pytest.mark.parametrize("cron, every, last, now, want", [
    # The case: every minute, fired at 03:37:00.2, now 03:37:30 -> 03:38:00 (not 03:37:00).
    ("* * * * *", None, "2026-03-01T03:37:00.200", "2026-03-01T03:37:30", "2026-03-01T03:38:00"),
    # At a minute boundary, just before and just after the firing of that minute.
    ("* * * * *", None, "2026-03-01T03:36:00.100", "2026-03-01T03:36:59.999", "2026-03-01T03:37:00"),
    ("* * * * *", None, "2026-03-01T03:37:00.001", "2026-03-01T03:37:00.002", "2026-03-01T03:38:00"),
    # Created (never fired) mid-minute: its first firing is the next minute.
    ("*/5 * * * *", None, "2026-03-01T03:37:10", "2026-03-01T03:37:11", "2026-03-01T03:40:00"),
    # Across midnight, and across a month's end.
    ("* * * * *", None, "2026-03-01T23:59:00.300", "2026-03-01T23:59:30", "2026-03-02T00:00:00"),
    ("30 23 * * *", None, "2026-03-01T23:30:00.050", "2026-03-01T23:45:00", "2026-03-02T23:30:00"),
    ("0 2 * * *", None, "2026-01-31T02:00:00.500", "2026-01-31T12:00:00", "2026-02-01T02:00:00"),
    # The issue's --every 90 case: fired at 03:37:18, now 03:37:30 -> 03:38:48 (not 03:38:37).
    (None, 90, "2026-03-01T03:37:18", "2026-03-01T03:37:30", "2026-03-01T03:38:48"),
    (None, 90, "2026-03-01T23:59:00", "2026-03-01T23:59:01", "2026-03-02T00:00:30"),
    (None, 4, "2026-03-01T03:37:18.250", "2026-03-01T03:37:18.300", "2026-03-01T03:37:22.250"),
])
def test_next_run_is_the_schedules_next_time_after_the_last_run(cron, every, last, now, want):
    assert next_run(cron, every, t(last), t(now)) == (t(want), False)


@pytest.mark.parametrize("cron, every, last, now", [
    ("* * * * *", None, "2026-03-01T03:36:00.100", "2026-03-01T03:37:30"),  # no beat fired 03:37
    (None, 90, "2026-03-01T03:30:00", "2026-03-01T03:37:30"),
])
def test_an_overdue_schedule_is_due_now(cron, every, last, now):
    assert next_run(cron, every, t(last), t(now)) == (t(now), True)
