"""Job commands of `sam3v` against the distributed pipeline: submit, status, watch, jobs, cancel, retry."""

from __future__ import annotations

import json
import time
from typing import Annotated, NoReturn, Optional

import typer
from rich.table import Table

from pipeline.core.errors import InputError
from sam3v.cli import job_output
from sam3v.cli.common import context, err_console, is_terminal, job_context, out_console, user_errors

app = typer.Typer()

FINAL_STATES = ("succeeded", "partial", "failed", "cancelled")


def summary_line(doc: dict) -> str:
    c = doc["counts"]
    return (f"job {doc['id']}: {doc['status']} - {c['succeeded']} succeeded, {c['failed']} failed, "
            f"{c['cancelled']} cancelled, {c['processing']} processing, {c['queued']} queued of {doc['total']}"
            + (f"; {rejected} manifest line(s) rejected" if (rejected := doc.get("rejected_total", len(doc["rejected"])))
               else ""))


def watch_job(store, job_id: str, poll: float = 0.5, as_json: bool = False) -> dict:
    """Live progress until the job ends; returns the final status document. On a terminal: bars, an
    ETA once every video is planned and each failure as it happens (sam3v/cli/job_progress.py).
    Without one (a log, a pipe) or with ``as_json``: one line per video as it ends, on stdout
    (sam3v/cli/job_output.py)."""
    if as_json or not is_terminal():
        return job_output.follow(store, job_id, job_output.echo, as_json, poll)
    from sam3v.cli.job_progress import Bars, bars, follow_live

    with bars() as progress:
        return follow_live(store, job_id, Bars(progress), poll)


def finish(doc: dict, *notes: str, results: str | None = None, as_json: bool = False) -> NoReturn:
    """End a command that waited for its job: what went wrong, the summary, where the results are, the
    job id last (``as_json``: the job record only); exit 0 only when every video succeeded, else 1.
    ``results``: where this shell's settings put results.jsonl, used only when no worker recorded
    where it wrote it (the workers' storage may differ from this shell's)."""
    results = doc.get("results") or results
    if as_json:
        typer.echo(json.dumps(job_output.job_record(doc, results)))
        raise typer.Exit(job_output.exit_code(doc))
    if not is_terminal():  # each video and rejected line had its own line already
        for line in job_output.end_lines(doc, results, summary_line(doc)):
            typer.echo(line)
        for note in notes:
            typer.echo(note)
        typer.echo(doc["id"])
        raise typer.Exit(job_output.exit_code(doc))
    for r in doc["rejected"]:
        err_console.print(f"[yellow]manifest line {r['line']}:[/] {r['reason']}", highlight=False)
    for v in doc["videos"]:
        if v["status"] == "failed":
            err_console.print(f"[red]video {v['id']} failed:[/] {v.get('error')}", highlight=False)
    err_console.print(summary_line(doc))
    if results:
        err_console.print(f"results: {results}", highlight=False)
    for note in notes:
        err_console.print(note)
    typer.echo(doc["id"])
    raise typer.Exit(job_output.exit_code(doc))


@app.command()
@user_errors
def submit(
    manifest: Annotated[str, typer.Argument(help="Manifest: JSONL or CSV, a local path or s3://bucket/key.")],
    prompt: Annotated[Optional[str], typer.Option(help="Default prompt for lines without one.")] = None,
    name: Annotated[str, typer.Option(help="A name for the job.")] = "",
    idempotency_key: Annotated[Optional[str], typer.Option(
        help="Submitting again with the same key and manifest returns the same job and enqueues nothing.")] = None,
    strict: Annotated[bool, typer.Option(help="Refuse the whole job if any manifest line is bad.")] = False,
    wait: Annotated[bool, typer.Option(
        help="Wait for the job: a live bar on a terminal, else one timestamped line per finished video (id, "
             "state, results URI or reason) and the results location. Exit 0 if every video succeeded, 1 if "
             "any failed or was cancelled.")] = False,
    on_done: Annotated[Optional[str], typer.Option(
        metavar="URL", help="POST the job's outcome to this URL when it ends, signed like the API's webhooks (secret: "
             "`sam3v hook-secret`); sent by the worker that ends the job, retried on failure.")] = None,
    check_inputs: Annotated[str, typer.Option(
        metavar="sample|all|none", help="HEAD the manifest's s3:// inputs first: sample (the first 20), all, or none. All checked "
             "missing refuses the job; some missing warns per line.")] = "sample",
) -> None:
    """Submit a manifest to the distributed pipeline; prints the job id on the last line."""
    from pipeline.control.manifest import manifest_file
    from pipeline.control.producer import submit_manifest

    settings, celery_app, store = context()
    if not settings.broker_url:
        raise InputError("SAM3V_BROKER_URL is not set: use `sam3v run` for the embedded mode, or set a broker")
    from pipeline.control.submit_checks import preflight_submit

    if on_done:  # the checks the worker makes when it sends (scheme, private addresses): refused here, now
        from pipeline.core.urls import check_url

        try:
            check_url(on_done, settings.url_allowlist)
        except InputError as err:
            raise InputError(f"--on-done: {err}") from None
    if check_inputs not in ("sample", "all", "none"):
        raise InputError(f"--check-inputs {check_inputs!r}: expected sample, all or none")
    with manifest_file(manifest) as data:  # read line by line: memory flat in the manifest's size
        for warning in preflight_submit(settings, store.r, data, manifest, prompt, strict, check_inputs):
            err_console.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
        done = submit_manifest(celery_app, store, data, manifest, name=name,
                               default_prompt=prompt, idempotency_key=idempotency_key, strict=strict,
                               max_prompts=settings.max_prompts, on_done=on_done)
    err_console.print(f"{'submitted' if done.created else 'already submitted'}: {done.accepted} video(s), "
                      f"{done.rejected} rejected line(s)")
    if wait:
        finish(watch_job(store, done.job_id), results=job_output.results_uri(settings, done.job_id))
    typer.echo(done.job_id)


@app.command("hook-secret")
@user_errors
def hook_secret() -> None:
    """The secret `submit --on-done` hooks are signed with: X-Sam3v-Signature is t=<unix time>,v2=<hex
    HMAC-SHA256 of "<t>\\n<X-Sam3v-Event>\\n<X-Sam3v-Delivery>\\n<raw body>"> under it, as the API's
    webhooks (README: verifying a webhook)."""
    from pipeline.core.webhook_signing import JOB_HOOKS, key_secret, server_secret

    settings, _, store = context()
    typer.echo(key_secret(server_secret(store.r, settings.api_webhook_secret), JOB_HOOKS))


@app.command()
@user_errors
def status(
    job: str,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
    page: Annotated[int, typer.Option(min=1, help="Which page of videos and rejected lines, in manifest order.")] = 1,
    limit: Annotated[int, typer.Option(min=0, help="Videos (and rejected lines) a page.")] = 50,
    videos: Annotated[str, typer.Option(
        metavar="page|all", help="'page' (the counts, and one page of videos: the same cost for any job size) or 'all' (every "
             "video and rejected line: a scan of them all).")] = "page",
) -> None:
    """A job's state and counts (kept as it runs), and a page of its videos and rejected manifest lines."""
    if videos not in ("page", "all"):
        raise InputError(f"--videos {videos!r}: expected page or all")
    _, _, store = job_context(job)
    doc = store.status_document(job) if videos == "all" else store.status_document(job, (page - 1) * limit, limit)
    if as_json:
        typer.echo(json.dumps(doc, indent=1))
        return
    out_console.print(summary_line(doc), highlight=False)
    if doc.get("results"):
        out_console.print(f"results: {doc['results']}", highlight=False)
    table = Table("line", "video", "status", "frames", "error / outputs")
    for v in doc["videos"]:
        extra = v.get("error") or ", ".join((v.get("outputs") or {}).values())
        table.add_row(str(v.get("line") or ""), v["id"], v["status"],
                      f"{v.get('frames_done') or 0}/{v.get('frames_total') or '?'}", extra)
    out_console.print(table)
    for r in doc["rejected"]:
        out_console.print(f"line {r['line']}: {r['reason']}", highlight=False)
    if videos == "page" and (page * limit < doc["total"] or page * limit < doc["rejected_total"]):
        out_console.print(f"page {page} of {-(-max(doc['total'], doc['rejected_total']) // max(limit, 1))}: "
                          f"--page {page + 1} for more, --videos all for everything", highlight=False)


@app.command()
@user_errors
def watch(job: str, as_json: Annotated[bool, typer.Option(
        "--json", help="One JSON object a line: each video as it ends, then the job (shapes: "
                       "sam3v/cli/job_output.py).")] = False) -> None:
    """Follow a job until it ends: a live bar on a terminal, else one timestamped line per finished video.
    Exit 0 if every video succeeded, 1 if any failed or was cancelled (as `submit --wait`)."""
    settings, _, store = job_context(job)
    finish(watch_job(store, job, as_json=as_json), results=job_output.results_uri(settings, job), as_json=as_json)


# `sam3v jobs` lists; `sam3v jobs prune` is its subcommand (sam3v/cli/__init__.py adds it as a group).
jobs_app = typer.Typer()


@jobs_app.callback(invoke_without_command=True)
@user_errors
def jobs(ctx: typer.Context, limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20,
         as_json: Annotated[bool, typer.Option("--json", help=(
             'A JSON array: [{"id", "name", "status", "total", "counts", "created", "updated", "embedded", '
             '"folder"}], times ISO 8601 UTC; "embedded": true for a `sam3v run` job, "folder" its output '
             'folder (null for a job in Redis).'))] = False,
         ) -> None:
    """Recent jobs: those in Redis and the embedded runs (`sam3v run`) this machine recorded under
    SAM3V_CACHE, whose state is in their output folder ("unfinished": the run ended before writing it).
    `sam3v jobs prune` removes old ones from Redis."""
    if ctx.invoked_subcommand:
        return
    settings, _, store = context()
    rows = _job_rows(settings, store, limit)
    if as_json:
        typer.echo(json.dumps([{k: v for k, v in r.items() if k != "_created"} for r in rows], indent=1))
        return
    table = Table("job", "name", "status", "videos", "succeeded", "failed", "created", "where")
    for r in rows:
        counts = r["counts"] or {}
        table.add_row(r["id"], r["name"], r["status"], _cell(r["total"]), _cell(counts.get("succeeded")),
                      _cell(counts.get("failed")), time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["_created"])),
                      f"embedded: {r['folder']}" if r["embedded"] else "Redis")
    out_console.print(table)


def _job_rows(settings, store, limit: int) -> list[dict]:
    """The newest ``limit`` jobs of Redis and of the embedded index together, newest first (each row as
    ``jobs --json`` prints it, plus "_created", the time to sort on)."""
    from sam3v.embedded_jobs import recent

    rows = [{"id": s.id, "name": s.name, "status": s.status, "total": s.total, "counts": s.counts,
             "created": job_output.stamp(s.created), "updated": job_output.stamp(s.updated), "embedded": False,
             "folder": None, "_created": s.created} for s in store.jobs(limit)]
    rows += [{"id": e.id, "name": e.name, "status": e.status, "total": e.total, "counts": e.counts,
              "created": job_output.stamp(e.created), "updated": None if e.updated is None else job_output.stamp(e.updated),
              "embedded": True, "folder": str(e.folder), "_created": e.created} for e in recent(settings, limit)]
    return sorted(rows, key=lambda r: r["_created"], reverse=True)[:limit]


def _cell(value) -> str:
    return "" if value is None else str(value)


@app.command()
@user_errors
def cancel(job: str) -> None:
    """Stop a job's queued and running videos and mark it cancelled; exit 1, changing nothing, if it
    has ended. A worker then writes its results.jsonl and removes its work/ files."""
    from pipeline.control.lifecycle import cancel_job

    _, celery_app, store = job_context(job)
    done = cancel_job(celery_app, store, job)
    if done.ended_as:
        err_console.print(f"job {job} has already ended ({done.ended_as}): nothing to cancel, nothing changed",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    err_console.print(f"job {job}: cancelled ({done.stopped} video(s) stopped)")


@app.command()
@user_errors
def retry(
    job: str,
    video: Annotated[Optional[list[str]], typer.Option(
        "--video", metavar="ID", help="Only this video (repeatable); it must be failed, or cancelled with --cancelled.")] = None,
    cancelled: Annotated[bool, typer.Option(
        "--cancelled", help="Run cancelled videos again too (a cancelled job's unfinished work).")] = False,
) -> None:
    """Run a job's failed videos again (and its cancelled ones with --cancelled); exit 1, changing
    nothing, when no video qualifies."""
    from pipeline.control.lifecycle import choose_retry
    from pipeline.control.producer import retry_videos

    _, celery_app, store = job_context(job)
    doc = store.status_document(job)
    choice = choose_retry(doc, video, cancelled)
    for vid, why in choice.refused.items():
        err_console.print(f"video {vid} {why}", highlight=False, soft_wrap=True)
    if not choice.videos:
        which = "named " if video else ("failed or cancelled " if cancelled else "failed ")
        hint = "" if video or cancelled or not doc["counts"]["cancelled"] else " (--cancelled runs cancelled ones)"
        err_console.print(f"job {job} ({doc['status']}): no {which}video to run again{hint}; nothing changed",
                          highlight=False, soft_wrap=True)
        raise typer.Exit(1)
    retry_videos(celery_app, store, job, choice.videos, store.job_spec(job).get("lane", "batch"))
    err_console.print(f"job {job}: {len(choice.videos)} video(s) queued again: {', '.join(choice.videos[:20])}"
                      + (" ..." if len(choice.videos) > 20 else ""), highlight=False, soft_wrap=True)


@jobs_app.command("prune")
@user_errors
def prune(
    older_than: Annotated[str, typer.Option(
        "--older-than", metavar="DURATION", help="Jobs that ended more than this long ago: 30d, 12h, 90m or seconds.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only list what would be removed.")] = False,
) -> None:
    """Remove ended jobs' records from Redis now (running jobs never); their results stay in storage.
    Prints one line per removed job. Without this they expire after SAM3V_JOB_RETENTION."""
    from pipeline.core.retention import parse_duration, prune as prune_jobs

    try:
        seconds = parse_duration(older_than)
    except ValueError as err:
        raise InputError(f"--older-than: {err}") from None
    _, _, store = context()
    removed = prune_jobs(store, seconds, dry_run=dry_run)
    for p in removed:
        typer.echo(f"{p.job_id}\t{p.status}\tended {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(p.ended))}"
                   f"\t{p.name}")
    err_console.print(f"{'would remove' if dry_run else 'removed'} {len(removed)} job(s) that ended more than "
                      f"{older_than} ago; their results stay in storage", highlight=False, soft_wrap=True)
