"""``ytvis.json``: YouTube-VIS 2021, one video (the processed frames) and one instance per object.

Each instance lists, for every frame of the video, its RLE (masks.json's, compressed counts) or
null where the object is not shown, with ``bboxes`` and ``areas`` alike; ``score`` is the mean of
its frames' scores and ``track_id`` the masks.json object id.
"""

from __future__ import annotations

from pathlib import Path

from workers.media import rle
from workers.media.exports.common import categories, category_of, frame_file, info, json_bytes, shown, size


def ytvis_document(document: dict) -> dict:
    height, width = size(document)
    frames = document["frames"]
    category = category_of(document)
    video = {"id": 1, "width": width, "height": height, "length": len(frames),
             "file_names": [frame_file(entry["frame"]) for entry in frames]}
    shown_in = [{o["id"]: o for o in entry["objects"] if shown(o)} for entry in frames]
    annotations = []
    for obj in document["objects"]:
        segmentations, bboxes, areas, scores = [], [], [], []
        for objects in shown_in:
            found = objects.get(obj["id"])
            segmentations.append(found["segmentation"] if found else None)
            bboxes.append(found["bbox"] if found else None)
            areas.append(rle.area(found["segmentation"]) if found else None)
            if found:
                scores.append(found["score"])
        if not scores:  # listed, but empty in every frame: no instance to give
            continue
        annotations.append({
            "id": len(annotations) + 1, "video_id": 1, "category_id": category[obj["id"]], "iscrowd": 0,
            "width": width, "height": height, "length": 1, "segmentations": segmentations, "bboxes": bboxes,
            "areas": areas, "score": round(sum(scores) / len(scores), 6), "track_id": obj["id"],
        })
    return {"info": info(document), "licenses": [], "categories": categories(document), "videos": [video],
            "annotations": annotations}


def write_ytvis(document: dict, path: Path) -> None:
    path.write_bytes(json_bytes(ytvis_document(document)))
