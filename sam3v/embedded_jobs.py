"""Where embedded jobs (`sam3v run`) can be found again. Their state lives in an in-process Redis
that ends with the run, so each run records its job id and output folder in a small index under
SAM3V_CACHE, and writes the job's final status document next to its results; `sam3v status`,
`watch` and `jobs` then point there instead of answering "no such job"."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.layout import STATUS_NAME
from pipeline.core.settings import Settings

INDEX = "embedded-jobs.jsonl"
STATUS_FILE = STATUS_NAME


def _index(settings: Settings) -> Path:
    return Path(settings.cache) / INDEX


def record(settings: Settings, job_id: str, out: Path, manifest: Path) -> Path:
    """Note a new embedded job; returns its folder."""
    folder = Path(out).resolve() / job_id
    path = _index(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps({"id": job_id, "folder": str(folder), "manifest": str(manifest), "created": time.time()}) + "\n")
    return folder


def save_status(folder: Path, doc: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / STATUS_FILE
    tmp = path.with_suffix(".json.partial")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(path)
    return path


def _entries(settings: Settings) -> list[dict]:
    """The index's entries, oldest first (a line that does not parse is skipped)."""
    path = _index(settings)
    if not path.is_file():
        return []
    entries = []
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("id") and entry.get("folder"):
            entries.append(entry)
    return entries


def find(settings: Settings, job_id: str) -> Path | None:
    """The folder of embedded job ``job_id``, if this machine ran it."""
    for entry in _entries(settings):
        if entry["id"] == job_id:
            return Path(entry["folder"])
    return None


#: An embedded job's state when its run never wrote status.json (still running, or interrupted).
UNFINISHED = "unfinished"


@dataclass(frozen=True)
class EmbeddedJob:
    id: str
    folder: Path
    created: float
    status: str  # the job's final state, or UNFINISHED
    name: str
    total: int | None
    counts: dict[str, int] | None
    updated: float | None


def recent(settings: Settings, limit: int) -> list[EmbeddedJob]:
    """The newest ``limit`` embedded jobs this machine ran, newest first, with their saved states."""
    found = []
    for entry in sorted(_entries(settings), key=lambda e: float(e.get("created") or 0), reverse=True)[:limit]:
        folder = Path(entry["folder"])
        try:
            doc = json.loads((folder / STATUS_FILE).read_text())
        except (OSError, ValueError):
            doc = {}
        found.append(EmbeddedJob(entry["id"], folder, float(entry.get("created") or 0), doc.get("status", UNFINISHED),
                                 doc.get("name", ""), doc.get("total"), doc.get("counts"), doc.get("updated")))
    return found


def where_message(settings: Settings, job_id: str) -> str | None:
    """What to tell a user who asks the distributed commands about an embedded job."""
    folder = find(settings, job_id)
    if folder is None:
        return None
    status = folder / STATUS_FILE
    state = ""
    if status.is_file():
        state = f" (it ended {json.loads(status.read_text()).get('status')})"
    return (f"job {job_id} is an embedded run (`sam3v run`){state}: embedded jobs live in their output folder, "
            f"not in Redis: {folder} ({STATUS_FILE}, results.jsonl)")
