"""`sam3v report JOB`: (re)make a job's report.html beside its results.jsonl and say where it is.

A job in Redis is reported from its status document (a running job too: its current states); an
embedded job (`sam3v run`) or a job folder from its status.json and results.jsonl; a job Redis has
forgotten from the results.jsonl in the workers' storage (SAM3V_STORAGE_URL).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.errors import InputError
from sam3v.cli.common import user_errors

app = typer.Typer()


def _rows(data: bytes, where: str) -> list[dict]:
    try:
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    except ValueError as err:
        raise InputError(f"{where}: not a results.jsonl ({err})") from None


def _from_folder(folder: Path) -> list[str]:
    from pipeline.core.layout import RESULTS_NAME, STATUS_NAME
    from pipeline.core.report import write_report
    from pipeline.core.storage import LocalStorage

    results = folder / RESULTS_NAME
    if not results.is_file():
        raise InputError(f"{folder}: no {RESULTS_NAME} (the job has not ended)")
    status = folder / STATUS_NAME
    job = json.loads(status.read_text()) if status.is_file() else {}
    job = {**job, "id": job.get("id") or folder.name}
    return write_report(LocalStorage(folder.parent), job, _rows(results.read_bytes(), str(results)))


def _from_settings(job_id: str) -> list[str]:
    from pipeline.core.layout import JobKeys
    from pipeline.core.report import write_report
    from pipeline.core.results import result_rows
    from pipeline.core.settings import get_settings
    from pipeline.core.storage import MissingKey, open_storage
    from sam3v.cli.common import context
    from sam3v.embedded_jobs import find

    settings = get_settings()
    folder = find(settings, job_id)
    if folder is not None:
        return _from_folder(folder)
    storage = open_storage(settings.storage_url)
    _, _, store = context()
    if store.job_exists(job_id):
        doc = store.status_document(job_id)
        return write_report(storage, doc, result_rows(doc))
    try:
        data = storage.get_bytes(JobKeys(job_id).results)
    except MissingKey:
        raise InputError(f"no such job: {job_id} (not in Redis, not an embedded run of this machine, and no "
                         f"{storage.uri(JobKeys(job_id).results)})") from None
    return write_report(storage, {"id": job_id}, _rows(data, storage.uri(JobKeys(job_id).results)))


@app.command()
@user_errors
def report(job: Annotated[str, typer.Argument(
        help="A job id, or the folder of a job (the one holding its results.jsonl).")]) -> None:
    """Make the job's report.html (one self-contained page: counts, timing, a row per video with
    three overlay thumbnails) beside its results.jsonl, and print where it is."""
    folder = Path(job)
    pages = _from_folder(folder) if folder.is_dir() else _from_settings(job)
    for uri in pages:
        typer.echo(uri)
