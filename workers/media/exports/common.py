"""What the exports share: categories (one per prompt), frame file names, which masks count.

Every export is a pure function of the masks.json document: the same document gives the same
bytes, whether the finalize step writes it or ``sam3v export`` does later.
"""

from __future__ import annotations

import json

from workers.media import rle
from workers.media.masks_document import prompt_name


def category_names(document: dict) -> list[str]:
    """One category per prompt, in the request's order (ids 1, 2, ...), then one for the objects
    prompted visually (schema 2) if any; a prompt an object names that the list lacks (never
    expected) is added after them rather than dropped."""
    return list(dict.fromkeys([*document["prompts"], *(prompt_name(o["prompt"]) for o in document["objects"])]))


def categories(document: dict) -> list[dict]:
    return [{"id": i, "name": name, "supercategory": "object"} for i, name in enumerate(category_names(document), 1)]


def category_of(document: dict) -> dict[int, int]:
    """Object id -> its prompt's category id."""
    ids = {name: i for i, name in enumerate(category_names(document), 1)}
    return {o["id"]: ids[prompt_name(o["prompt"])] for o in document["objects"]}


def frame_file(frame: int) -> str:
    """The image name of source frame ``frame`` (0-based): CVAT names a video task's frames so."""
    return f"frame_{frame:06d}.jpg"


def shown(obj: dict) -> bool:
    """Whether a frame entry's mask covers any pixel. An object listed with an empty mask is absent
    from that frame in every export (no annotation, a null, no row): a zero-area box is no box."""
    return rle.area(obj["segmentation"]) > 0


def size(document: dict) -> tuple[int, int]:
    """(height, width) of the masks: the video's displayed size."""
    return document["video"]["height"], document["video"]["width"]


def info(document: dict) -> dict:
    """The ``info`` block of the JSON exports: what made the masks."""
    return {"description": "sam3v: SAM 3 video segmentation", "model": document["model"]["id"],
            "schema_version": document["schema_version"]}


def json_bytes(doc: dict) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()
