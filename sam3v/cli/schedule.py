"""`sam3v schedule`: nightly jobs, kept in Redis by celery-redbeat (`sam3v beat` fires them)."""

from __future__ import annotations

import json
from typing import Annotated, Optional

import typer
from rich.table import Table

from sam3v.cli.common import err_console, out_console, schedules_app, user_errors

app = typer.Typer(help="Nightly jobs (celery-redbeat: schedules live in Redis).", no_args_is_help=True)


@app.command("add")
@user_errors
def schedule_add(
    name: str,
    manifest: Annotated[str, typer.Option(metavar="URI", help="Manifest location (s3://bucket/key or a path workers can read).")],
    cron: Annotated[Optional[str], typer.Option(metavar="EXPR", help='Cron expression, e.g. "0 2 * * *" (UTC).')] = None,
    every: Annotated[Optional[float], typer.Option(metavar="SECONDS", help="Or: fire every this many seconds.")] = None,
    prompt: Annotated[Optional[str], typer.Option(help="Default prompt for lines without one.")] = None,
) -> None:
    """Add (or replace) a schedule that submits MANIFEST at each firing."""
    from pipeline.control import schedules
    from pipeline.control.submit_checks import check_scheduled_manifest
    from pipeline.core.settings import get_settings

    schedules.timing(cron, every)  # a usage error first, before the manifest is read
    for warning in check_scheduled_manifest(manifest, prompt, get_settings().max_prompts):
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    celery_app = schedules_app()
    schedules.add(celery_app, name, manifest, prompt, cron, every)
    err_console.print(f"schedule {name!r} saved")
    _warn_without_beat(celery_app)


def _warn_without_beat(celery_app) -> None:
    from pipeline.control import schedules

    if (warning := schedules.beat_warning(celery_app)) is not None:
        err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)


@app.command("list")
@user_errors
def schedule_list(as_json: Annotated[bool, typer.Option(
        "--json", help='One JSON array: [{"name", "cron", "every", "manifest", "prompt", "last_run_at", '
                       '"next_run_at", "overdue", "runs"}], times in ISO 8601 UTC, last_run_at null before the first firing; '
                       'next_run_at is when beat fires it (now when overdue: beat fires it at its next tick).')] = False,
) -> None:
    """List schedules with their last and next run (UTC)."""
    from pipeline.control import schedules

    celery_app = schedules_app()
    entries = schedules.list_entries(celery_app)
    _warn_without_beat(celery_app)
    if as_json:
        typer.echo(json.dumps(entries, indent=1))
        return
    table = Table("name", "when", "manifest", "prompt", "last run", "next run")
    for e in entries:
        table.add_row(e["name"], e["cron"] or f"every {e['every']} s", e["manifest"], e["prompt"] or "",
                      e["last_run_at"] or "never", ("now (overdue)" if e["overdue"] else e["next_run_at"]))
    out_console.print(table)


@app.command("remove")
@user_errors
def schedule_remove(name: str) -> None:
    """Remove a schedule."""
    from pipeline.control import schedules

    schedules.remove(schedules_app(), name)
    err_console.print(f"schedule {name!r} removed")
