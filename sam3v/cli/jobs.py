"""Job commands of `sam3v` against the distributed pipeline: submit, status, watch, jobs, cancel, retry."""

from __future__ import annotations

import json
import time
from typing import Annotated, NoReturn, Optional

import typer
from rich.table import Table

from pipeline.core.errors import InputError
from sam3v.cli.common import context, err_console, job_context, out_console, progress_bar, user_errors

app = typer.Typer()

FINAL_STATES = ("succeeded", "partial", "failed", "cancelled")


def summary_line(doc: dict) -> str:
    c = doc["counts"]
    return (f"job {doc['id']}: {doc['status']} - {c['succeeded']} succeeded, {c['failed']} failed, "
            f"{c['cancelled']} cancelled, {c['processing']} processing, {c['queued']} queued of {doc['total']}"
            + (f"; {len(doc['rejected'])} manifest line(s) rejected" if doc["rejected"] else ""))


def watch_job(store, job_id: str, poll: float = 0.5) -> dict:
    """Live progress until the job ends; returns the final status document."""
    with progress_bar("{task.fields[detail]}") as bar:
        videos = bar.add_task("videos", total=None, detail="")
        frames = bar.add_task("frames", total=None, detail="")
        started, first_frames = time.monotonic(), None
        while True:
            doc = store.status_document(job_id)
            c = doc["counts"]
            done = c["succeeded"] + c["failed"] + c["cancelled"]
            bar.update(videos, total=doc["total"], completed=done,
                       detail=f"{c['succeeded']} ok, {c['failed']} failed, {c['processing']} running")
            if first_frames is None:
                first_frames = doc["frames_done"]
            rate = (doc["frames_done"] - first_frames) / max(1e-6, time.monotonic() - started)
            bar.update(frames, total=doc["frames_total"] or None, completed=doc["frames_done"],
                       detail=f"{rate:.1f} frames/s")
            if doc["status"] in FINAL_STATES:
                return doc
            time.sleep(poll)


def finish(doc: dict, *notes: str) -> NoReturn:
    """End a command that waited for its job: what went wrong, the summary, the job id last; exit 0 only
    when every video succeeded."""
    for r in doc["rejected"]:
        err_console.print(f"[yellow]manifest line {r['line']}:[/] {r['reason']}", highlight=False)
    for v in doc["videos"]:
        if v["status"] == "failed":
            err_console.print(f"[red]video {v['id']} failed:[/] {v.get('error')}", highlight=False)
    err_console.print(summary_line(doc))
    for note in notes:
        err_console.print(note)
    typer.echo(doc["id"])
    raise typer.Exit(0 if doc["status"] == "succeeded" else 1)


@app.command()
@user_errors
def submit(
    manifest: Annotated[str, typer.Argument(help="Manifest: JSONL or CSV, a local path or s3://bucket/key.")],
    prompt: Annotated[Optional[str], typer.Option(help="Default prompt for lines without one.")] = None,
    name: Annotated[str, typer.Option(help="A name for the job.")] = "",
    idempotency_key: Annotated[Optional[str], typer.Option(
        help="Submitting again with the same key and manifest returns the same job and enqueues nothing.")] = None,
    strict: Annotated[bool, typer.Option(help="Refuse the whole job if any manifest line is bad.")] = False,
    wait: Annotated[bool, typer.Option(help="Show progress; exit 0 if every video succeeded, else 1.")] = False,
) -> None:
    """Submit a manifest to the distributed pipeline; prints the job id on the last line."""
    from pipeline.control.manifest import load_manifest_bytes
    from pipeline.control.producer import submit_manifest

    settings, celery_app, store = context()
    if not settings.broker_url:
        raise InputError("SAM3V_BROKER_URL is not set: use `sam3v run` for the embedded mode, or set a broker")
    done = submit_manifest(celery_app, store, load_manifest_bytes(manifest), manifest, name=name,
                           default_prompt=prompt, idempotency_key=idempotency_key, strict=strict,
                           max_prompts=settings.max_prompts)
    err_console.print(f"{'submitted' if done.created else 'already submitted'}: {done.accepted} video(s), "
                      f"{done.rejected} rejected line(s)")
    if wait:
        finish(watch_job(store, done.job_id))
    typer.echo(done.job_id)


@app.command()
@user_errors
def status(job: str, as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False) -> None:
    """A job's state, counts per state, each video, and rejected manifest lines."""
    _, _, store = job_context(job)
    doc = store.status_document(job)
    if as_json:
        typer.echo(json.dumps(doc, indent=1))
        return
    out_console.print(summary_line(doc), highlight=False)
    table = Table("video", "status", "frames", "error / outputs")
    for v in doc["videos"][:200]:
        extra = v.get("error") or ", ".join((v.get("outputs") or {}).values())
        table.add_row(v["id"], v["status"], f"{v.get('frames_done') or 0}/{v.get('frames_total') or '?'}", extra)
    out_console.print(table)
    for r in doc["rejected"]:
        out_console.print(f"line {r['line']}: {r['reason']}", highlight=False)


@app.command()
@user_errors
def watch(job: str) -> None:
    """Live progress of a job: videos done/failed, frames/s, ETA."""
    _, _, store = job_context(job)
    doc = watch_job(store, job)
    err_console.print(summary_line(doc))


@app.command()
@user_errors
def jobs(limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20) -> None:
    """Recent jobs."""
    _, _, store = context()
    table = Table("job", "name", "status", "videos", "succeeded", "failed", "created")
    for s in store.jobs(limit):
        table.add_row(s.id, s.name, s.status, str(s.total), str(s.counts["succeeded"]), str(s.counts["failed"]),
                      time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created)))
    out_console.print(table)


@app.command()
@user_errors
def cancel(job: str) -> None:
    """Stop a job's pending work and mark it cancelled."""
    _, _, store = job_context(job)
    n = store.mark_cancelled(job)
    err_console.print(f"job {job}: cancelled ({n} video(s) stopped)")


@app.command()
@user_errors
def retry(job: str) -> None:
    """Run a job's failed videos again."""
    from pipeline.control.producer import retry_videos

    _, celery_app, store = job_context(job)
    failed = [v["id"] for v in store.status_document(job)["videos"] if v["status"] == "failed"]
    retry_videos(celery_app, store, job, failed)
    err_console.print(f"job {job}: {len(failed)} failed video(s) queued again")
