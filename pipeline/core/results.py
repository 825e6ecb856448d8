"""A job's results.jsonl: one line for every manifest line, in line order, rejected lines included.

Each line: ``{"line", "id", "source", "state", "error", "frames", "objects", "outputs"}``. ``state``
is a video's final state (succeeded, failed, cancelled) or ``rejected`` for a manifest line that
never became a video (``error`` says why; ``id`` is null, ``source`` the input it named, if any).
``frames`` and ``objects`` are those of masks.json; for a video that did not succeed, ``frames`` is
the frames done before it stopped (what ``status`` showed: 23 frames of a cancelled video, not 0)
and ``objects`` null.
``objects_by_prompt`` ({prompt: objects}, in prompt order), ``thumbnails`` (URIs of the three
overlay thumbnails, ``pipeline.core.layout.THUMBNAIL_FILES``) and ``seconds`` (from the video's
start to its end, queueing excluded) feed the job's report (``pipeline.core.report``).
Built from the status document (what ``sam3v status --json`` prints), so both say the same.
"""

from __future__ import annotations

import json


def video_result(v: dict) -> dict:
    return {"line": v.get("line"), "id": v["id"], "source": v.get("video"), "state": v["status"],
            "error": v.get("error"), "frames": v.get("num_frames") or v.get("frames_done") or 0, "objects": v.get("num_objects"),
            "outputs": v.get("outputs") or {}, "objects_by_prompt": v.get("objects_by_prompt"),
            "thumbnails": v.get("thumbnails") or [], "seconds": _seconds(v)}


def _seconds(v: dict) -> float | None:
    """How long the video took, from its first task's start to its end; None when it never started."""
    started, finished = v.get("started"), v.get("finished")
    if not started or not finished:
        return None
    return round(max(0.0, float(finished) - float(started)), 3)


def rejected_result(r: dict) -> dict:
    return {"line": r["line"], "id": None, "source": r.get("video"), "state": "rejected", "error": r["reason"],
            "frames": 0, "objects": None, "outputs": {}, "objects_by_prompt": None, "thumbnails": [], "seconds": None}


def result_rows(doc: dict) -> list[dict]:
    rows = [video_result(v) for v in doc["videos"]] + [rejected_result(r) for r in doc["rejected"]]
    rows.sort(key=lambda row: (row["line"] or 0, row["id"] or ""))
    return rows


def results_jsonl(doc: dict) -> bytes:
    return rows_jsonl(result_rows(doc))


def rows_jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in rows).encode()
