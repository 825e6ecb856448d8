"""`sam3v run`: a whole manifest in this process (in-process broker and worker, local storage)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from pipeline.core.errors import InputError
from sam3v.cli.common import (
    FrameBatchOption,
    ObjectBatchOption,
    err_console,
    is_terminal,
    user_errors,
)
from sam3v.cli.jobs import finish, watch_job

app = typer.Typer()


@app.command()
@user_errors
def run(
    manifest: Annotated[Path, typer.Argument(help="Manifest (JSONL or CSV); local paths allowed.")],
    out: Annotated[Path, typer.Option(help="Output directory (local storage).")],
    prompt: Annotated[Optional[str], typer.Option(help="Default prompt for lines without one.")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model directory or Hugging Face id.")] = None,
    name: Annotated[str, typer.Option(help="A name for the job.")] = "",
    frame_batch: FrameBatchOption = None,
    object_batch: ObjectBatchOption = None,
) -> None:
    """Run a manifest here and now: in-process broker and worker, local storage. No Redis or S3."""
    if not manifest.is_file():
        raise InputError(f"no such manifest: {manifest}")
    from pipeline.control.producer import submit_manifest
    from pipeline.core.settings import get_settings
    from sam3v import embedded_jobs
    from sam3v.embedded import embedded_app, embedded_settings, embedded_worker

    settings = embedded_settings(out, model)
    if frame_batch:
        settings = settings.model_copy(update={"frame_batch": frame_batch})
    if object_batch is not None:
        settings = settings.model_copy(update={"object_batch": object_batch})
    from sam3v.local_checks import check_model

    check_model(settings.model)  # in well under a second, before the model load
    celery_app = embedded_app(settings)
    from workers.jobs.context import context
    from workers.jobs.context import model as worker_model

    worker_model()  # a missing model fails here, before any video is read
    store = context().status
    with embedded_worker(celery_app):
        done = submit_manifest(celery_app, store, manifest.read_bytes(), str(manifest), name=name,
                               default_prompt=prompt, allow_local=True, max_prompts=settings.max_prompts)
        folder = embedded_jobs.record(get_settings(), done.job_id, out, manifest)
        err_console.print(f"embedded job {done.job_id}: results in {folder}", highlight=False, soft_wrap=True)
        # On a terminal the bar hides them until the end: say them now (without one, each is a line already).
        for r in store.status_document(done.job_id)["rejected"] if is_terminal() else []:
            err_console.print(f"[yellow]manifest line {r['line']}:[/] {r['reason']}", highlight=False, soft_wrap=True)
        doc = watch_job(store, done.job_id)
    embedded_jobs.save_status(folder, store.status_document(done.job_id))
    finish(doc, f"results: {out / done.job_id / 'results.jsonl'}")
