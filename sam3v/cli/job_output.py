"""A job's progress for logs and scripts: one timestamped line per finished video, JSON records of
stable shape, and the exit code that `watch`, `submit --wait` and `run` share.

Shapes (``--json``; one object a line, the ``job`` record last):
- ``{"event": "video", "time", "job", "video", "line", "source", "status", "error", "frames",
  "objects", "outputs"}`` when a video ends (``time``: when it ended, ISO 8601 UTC);
- ``{"event": "job", "time", "job", "name", "status", "total", "counts", "rejected": [{"line",
  "reason"}], "results"}`` when the job ends (``results``: the URI of its results.jsonl).
"""

from __future__ import annotations

import json
import time
from typing import Callable

import typer

from pipeline.core.status import TERMINAL

FINAL_STATES = ("succeeded", "partial", "failed", "cancelled")


def exit_code(doc: dict) -> int:
    """0 when every video succeeded; 1 when any failed or was cancelled (a partial, failed or
    cancelled job). Usage errors exit 2 before a job is watched."""
    return 0 if doc["status"] == "succeeded" else 1


def stamp(when: float | None = None) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() if when is None else when))


def video_record(job_id: str, v: dict) -> dict:
    return {"event": "video", "time": stamp(v.get("finished") or v.get("updated")), "job": job_id,
            "video": v["id"], "line": v.get("line"), "source": v.get("video"), "status": v["status"],
            "error": v.get("error"), "frames": v.get("num_frames") or v.get("frames_done") or 0,
            "objects": v.get("num_objects"), "outputs": v.get("outputs") or {}}


def job_record(doc: dict, results: str | None) -> dict:
    return {"event": "job", "time": stamp(), "job": doc["id"], "name": doc.get("name", ""),
            "status": doc["status"], "total": doc["total"], "counts": doc["counts"],
            "rejected": doc["rejected"], "results": results}


def video_line(job_id: str, v: dict) -> str:
    """``<time> <job> <video> <state> <results URI | reason>`` (frames and objects when it succeeded)."""
    rec = video_record(job_id, v)
    if rec["status"] == "succeeded":
        where = rec["outputs"].get("masks") or ", ".join(rec["outputs"].values())
        detail = f"frames={rec['frames']} objects={rec['objects']} {where}"
    else:
        detail = rec["error"] or ""
    return f"{rec['time']} {job_id} {rec['video']} {rec['status']} {detail}".rstrip()


def follow(store, job_id: str, emit: Callable[[str], None], as_json: bool, poll: float = 0.5) -> dict:
    """Poll the job until it ends, emitting each video once as it ends (in manifest order within a
    poll); returns the final status document. Rejected manifest lines are emitted first, as lines
    (in JSON they are part of the job record)."""
    seen: set[str] = set()
    doc = store.status_document(job_id)
    if not as_json:
        for r in doc["rejected"]:
            emit(f"{stamp(doc['created'])} {job_id} line {r['line']} rejected: {r['reason']}")
    while True:
        for v in doc["videos"]:
            if v["status"] in TERMINAL and v["id"] not in seen:
                seen.add(v["id"])
                emit(json.dumps(video_record(job_id, v)) if as_json else video_line(job_id, v))
        if doc["status"] in FINAL_STATES:
            return doc
        time.sleep(poll)
        doc = store.status_document(job_id)


def end_lines(doc: dict, results: str | None, summary: str) -> list[str]:
    """The last lines of a job followed without a terminal: the summary, then where its results are."""
    lines = [f"{stamp()} {summary}"]
    if results:
        lines.append(f"{stamp()} results: {results}")
    return lines


def results_uri(settings, job_id: str) -> str | None:
    """Where the job's results.jsonl is (or will be), from the storage settings; None if unknown."""
    from pipeline.core.layout import JobKeys
    from pipeline.core.storage import open_storage

    try:
        return open_storage(settings.storage_url).uri(JobKeys(job_id).results)
    except ValueError:
        return None


def echo(line: str) -> None:
    typer.echo(line)
