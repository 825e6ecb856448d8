"""Batch commands of `sam3v`: submit, run (embedded), status, watch, jobs, cancel, retry, worker."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from pipeline.core.errors import InputError

out_console = Console()
err_console = Console(stderr=True)


def _context():
    from pipeline.core.celery_app import make_app
    from pipeline.core.redis_conn import connect
    from pipeline.core.settings import get_settings
    from pipeline.core.status import StatusStore

    settings = get_settings()
    return settings, make_app(settings), StatusStore(connect(settings))


def _job_context(job: str):
    """``_context()`` for a command about one job; a clear error when there is no such job."""
    settings, celery_app, store = _context()
    if not store.job_exists(job):
        raise InputError(f"no such job: {job}")
    return settings, celery_app, store


def _read_manifest(location: str) -> bytes:
    from pipeline.control.manifest import load_manifest_bytes

    return load_manifest_bytes(location)


def _summary_line(doc: dict) -> str:
    c = doc["counts"]
    return (f"job {doc['id']}: {doc['status']} - {c['succeeded']} succeeded, {c['failed']} failed, "
            f"{c['cancelled']} cancelled, {c['processing']} processing, {c['queued']} queued of {doc['total']}"
            + (f"; {len(doc['rejected'])} manifest line(s) rejected" if doc["rejected"] else ""))


def watch_job(store, job_id: str, poll: float = 0.5) -> dict:
    """Live progress until the job ends; returns the final status document."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=err_console) as bar:
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
            if doc["status"] in ("succeeded", "partial", "failed", "cancelled"):
                return doc
            time.sleep(poll)


def _print_rejected(doc: dict) -> None:
    for r in doc["rejected"]:
        err_console.print(f"[yellow]manifest line {r['line']}:[/] {r['reason']}", highlight=False)
    for v in doc["videos"]:
        if v["status"] == "failed":
            err_console.print(f"[red]video {v['id']} failed:[/] {v.get('error')}", highlight=False)


def register(app: typer.Typer, user_errors) -> None:
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
        from pipeline.control.producer import submit_manifest

        settings, celery_app, store = _context()
        if not settings.broker_url:
            raise InputError("SAM3V_BROKER_URL is not set: use `sam3v run` for the embedded mode, or set a broker")
        done = submit_manifest(celery_app, store, _read_manifest(manifest), manifest, name=name,
                               default_prompt=prompt, idempotency_key=idempotency_key, strict=strict)
        err_console.print(f"{'submitted' if done.created else 'already submitted'}: {done.accepted} video(s), "
                          f"{done.rejected} rejected line(s)")
        if wait:
            doc = watch_job(store, done.job_id)
            _print_rejected(doc)
            err_console.print(_summary_line(doc))
            typer.echo(done.job_id)
            raise typer.Exit(0 if doc["status"] == "succeeded" else 1)
        typer.echo(done.job_id)

    @app.command()
    @user_errors
    def run(
        manifest: Annotated[Path, typer.Argument(help="Manifest (JSONL or CSV); local paths allowed.")],
        out: Annotated[Path, typer.Option(help="Output directory (local storage).")],
        prompt: Annotated[Optional[str], typer.Option(help="Default prompt for lines without one.")] = None,
        model: Annotated[Optional[str], typer.Option(help="Model directory or Hugging Face id.")] = None,
        name: Annotated[str, typer.Option(help="A name for the job.")] = "",
    ) -> None:
        """Run a manifest here and now: in-process broker and worker, local storage. No Redis or S3."""
        if not manifest.is_file():
            raise InputError(f"no such manifest: {manifest}")
        os.environ.pop("SAM3V_BROKER_URL", None)
        os.environ.pop("SAM3V_REDIS_URL", None)
        os.environ["SAM3V_STORAGE_URL"] = str(out.resolve())
        if model:
            os.environ["SAM3V_MODEL"] = model
        from pipeline.control.producer import submit_manifest
        from sam3v.embedded import embedded_worker
        from workers.tasks import app as celery_app
        from workers.tasks import context, model as load_worker_model

        load_worker_model()  # a missing model fails here, before any video is read
        store = context().status
        with embedded_worker(celery_app):
            done = submit_manifest(celery_app, store, manifest.read_bytes(), str(manifest), name=name,
                                   default_prompt=prompt, allow_local=True)
            doc = watch_job(store, done.job_id)
        _print_rejected(doc)
        err_console.print(_summary_line(doc))
        err_console.print(f"results: {out / done.job_id / 'results.jsonl'}")
        typer.echo(done.job_id)
        raise typer.Exit(0 if doc["status"] == "succeeded" else 1)

    @app.command()
    @user_errors
    def status(job: str, as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False) -> None:
        """A job's state, counts per state, each video, and rejected manifest lines."""
        _, _, store = _job_context(job)
        doc = store.status_document(job)
        if as_json:
            typer.echo(json.dumps(doc, indent=1))
            return
        out_console.print(_summary_line(doc), highlight=False)
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
        _, _, store = _job_context(job)
        doc = watch_job(store, job)
        err_console.print(_summary_line(doc))

    @app.command()
    @user_errors
    def jobs(limit: Annotated[int, typer.Option(help="How many, newest first.")] = 20) -> None:
        """Recent jobs."""
        _, _, store = _context()
        table = Table("job", "name", "status", "videos", "succeeded", "failed", "created")
        for s in store.jobs(limit):
            table.add_row(s.id, s.name, s.status, str(s.total), str(s.counts["succeeded"]), str(s.counts["failed"]),
                          time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(s.created)))
        out_console.print(table)

    @app.command()
    @user_errors
    def cancel(job: str) -> None:
        """Stop a job's pending work and mark it cancelled."""
        _, _, store = _job_context(job)
        n = store.mark_cancelled(job)
        err_console.print(f"job {job}: cancelled ({n} video(s) stopped)")

    @app.command()
    @user_errors
    def retry(job: str) -> None:
        """Run a job's failed videos again."""
        from pipeline.control.producer import retry_videos

        _, celery_app, store = _job_context(job)
        failed = [v["id"] for v in store.status_document(job)["videos"] if v["status"] == "failed"]
        retry_videos(celery_app, store, job, failed)
        err_console.print(f"job {job}: {len(failed)} failed video(s) queued again")

    @app.command()
    @user_errors
    def worker(
        queues: Annotated[str, typer.Option(
            help="Queues to consume: gpu, cpu, and the HTTP API's interactive-gpu, interactive-cpu.")] = "gpu,cpu",
        concurrency: Annotated[int, typer.Option(help="Processes (one per GPU for the gpu queue).")] = 1,
        max_tasks_per_child: Annotated[int, typer.Option(help="Recycle a process after this many tasks.")] = 200,
        loglevel: Annotated[str, typer.Option(help="Celery log level.")] = "INFO",
        hostname: Annotated[Optional[str], typer.Option(help="Celery node name.")] = None,
    ) -> None:
        """Start a Celery worker (prefork; the model loads once per process, in the child)."""
        settings, _, _ = _context()
        if not settings.broker_url:
            raise InputError("SAM3V_BROKER_URL is not set: a worker needs a broker (redis://... or amqp://...)")
        if any(q.endswith("gpu") for q in queues.split(",")):
            os.environ["SAM3V_PRELOAD_MODEL"] = "1"
        from workers.tasks import app as celery_app

        argv = ["worker", "-Q", queues, "-c", str(concurrency), "-P", "prefork", "-E",
                "--max-tasks-per-child", str(max_tasks_per_child), "--loglevel", loglevel]
        if hostname:
            argv += ["-n", hostname]
        celery_app.worker_main(argv)


def register_schedules(app: typer.Typer, user_errors) -> None:
    schedule_app = typer.Typer(help="Nightly jobs (celery-redbeat: schedules live in Redis).", no_args_is_help=True)
    app.add_typer(schedule_app, name="schedule")

    def _app():
        from pipeline.control import schedules

        settings, celery_app, _ = _context()
        if not settings.effective_redis_url:
            raise InputError("schedules live in Redis: set SAM3V_REDIS_URL or a redis:// SAM3V_BROKER_URL")
        schedules.configure(celery_app, settings.effective_redis_url)
        return schedules, celery_app

    @schedule_app.command("add")
    @user_errors
    def schedule_add(
        name: str,
        manifest: Annotated[str, typer.Option(help="Manifest location (s3://bucket/key or a path workers can read).")],
        cron: Annotated[Optional[str], typer.Option(help='Cron expression, e.g. "0 2 * * *" (UTC).')] = None,
        every: Annotated[Optional[float], typer.Option(help="Or: fire every this many seconds.")] = None,
        prompt: Annotated[Optional[str], typer.Option(help="Default prompt for lines without one.")] = None,
    ) -> None:
        """Add (or replace) a schedule that submits MANIFEST at each firing."""
        schedules, celery_app = _app()
        schedules.add(celery_app, name, manifest, prompt, cron, every)
        err_console.print(f"schedule {name!r} saved")

    @schedule_app.command("list")
    @user_errors
    def schedule_list() -> None:
        """List schedules."""
        schedules, celery_app = _app()
        table = Table("name", "when", "manifest", "prompt", "last run")
        for e in schedules.list_entries(celery_app):
            table.add_row(e["name"], e["cron"] or f"every {e['every']} s", e["manifest"], e["prompt"] or "",
                          e["last_run_at"] or "")
        out_console.print(table)

    @schedule_app.command("remove")
    @user_errors
    def schedule_remove(name: str) -> None:
        """Remove a schedule."""
        schedules, celery_app = _app()
        schedules.remove(celery_app, name)
        err_console.print(f"schedule {name!r} removed")

    @app.command()
    @user_errors
    def beat(loglevel: Annotated[str, typer.Option(help="Log level.")] = "INFO") -> None:
        """Run the scheduler (celery beat with RedBeat; several may run, one holds the lock)."""
        schedules, _ = _app()
        from workers.tasks import app as celery_app

        celery_app.start(["beat", "-S", "redbeat.RedBeatScheduler", "--loglevel", loglevel])

    @app.command()
    @user_errors
    def flower(
        port: Annotated[int, typer.Option(help="HTTP port.")] = 5555,
        address: Annotated[str, typer.Option(help="Listen address.")] = "127.0.0.1",
        basic_auth: Annotated[Optional[str], typer.Option(envvar="FLOWER_BASIC_AUTH",
                                                          help="user:password (the API is off without auth).")] = None,
    ) -> None:
        """Flower, the Celery monitor, against the configured broker (workers send events, -E)."""
        settings, _, _ = _context()
        if not settings.broker_url:
            raise InputError("SAM3V_BROKER_URL is not set: Flower watches a broker")
        argv = [sys.executable, "-m", "celery", "-b", settings.broker_url, "flower", f"--port={port}",
                f"--address={address}"]
        if basic_auth:
            argv.append(f"--basic-auth={basic_auth}")
        os.execv(sys.executable, argv)
