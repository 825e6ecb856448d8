"""``mot.txt``: MOTChallenge rows ``frame,id,x,y,w,h,score,-1,-1,-1``, by frame then id.

MOTChallenge counts from 1 as MATLAB does: ``frame`` is the source frame number + 1 and ``x, y``
the box's top-left pixel + 1 (motmetrics subtracts the 1 again when it reads them); ``id`` is the
masks.json object id and the box masks.json's.
"""

from __future__ import annotations

from pathlib import Path

from workers.media.exports.common import shown


def mot_rows(document: dict) -> list[str]:
    rows = []
    for entry in document["frames"]:
        for obj in sorted(entry["objects"], key=lambda o: o["id"]):
            if shown(obj):
                x, y, w, h = obj["bbox"]
                rows.append(f"{entry['frame'] + 1},{obj['id']},{x + 1:.2f},{y + 1:.2f},{w:.2f},{h:.2f},"
                            f"{obj['score']:.6f},-1,-1,-1\n")
    return rows


def write_mot(document: dict, path: Path) -> None:
    path.write_text("".join(mot_rows(document)))
