"""The control plane's one task that runs on a worker: a schedule's firing submits its job."""

from __future__ import annotations

from celery import shared_task

from pipeline.control import schedules
from workers.jobs.context import context


@shared_task(name=schedules.SCHEDULED_SUBMIT, bind=True)
def scheduled_submit_task(self, name: str, manifest: str, prompt: str | None, cron: str | None,
                          every: float | None) -> str:
    """One firing of a schedule: one job, whichever beat or redelivery sent it."""
    ctx = context()
    return schedules.fire(self.app, ctx.status, name, manifest, prompt, cron, every, ctx.settings.max_prompts)
