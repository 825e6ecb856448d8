"""``coco.json``: COCO instance segmentation, one image per processed frame.

Images are named ``frame_000012.jpg`` after their source frame (a CVAT video task's frame names)
and carry ``frame_index``; each annotation is one object in one frame: its masks.json RLE as is
(compressed counts), ``bbox``, ``area``, ``score``, the prompt's ``category_id`` and the object id as
``track_id``, at the top level (TAO's layout) and in ``attributes`` with ``keyframe`` (what CVAT reads
to import a track).
"""

from __future__ import annotations

from pathlib import Path

from workers.media import rle
from workers.media.exports.common import categories, category_of, frame_file, info, json_bytes, shown, size


def coco_document(document: dict) -> dict:
    height, width = size(document)
    category = category_of(document)
    images, annotations = [], []
    for image_id, entry in enumerate(document["frames"], 1):
        images.append({"id": image_id, "file_name": frame_file(entry["frame"]), "width": width, "height": height,
                       "frame_index": entry["frame"]})
        for obj in sorted(entry["objects"], key=lambda o: o["id"]):
            if not shown(obj):
                continue
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": category[obj["id"]],
                "segmentation": obj["segmentation"], "area": rle.area(obj["segmentation"]), "bbox": obj["bbox"],
                "iscrowd": 0, "score": obj["score"], "track_id": obj["id"],
                "attributes": {"track_id": obj["id"], "keyframe": True, "occluded": False},
            })
    return {"info": info(document), "licenses": [], "categories": categories(document), "images": images,
            "annotations": annotations}


def write_coco(document: dict, path: Path) -> None:
    path.write_bytes(json_bytes(coco_document(document)))
