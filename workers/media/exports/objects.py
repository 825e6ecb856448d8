"""``objects/<id>.mkv``: one lossless mask video per object, for editors (a matte per object).

Each covers every processed frame, as overlay.mp4 does, at the video's own size and nominal rate:
255 where the object's mask is, 0 elsewhere and in frames it is not shown. FFV1 in Matroska,
every frame a keyframe; written bit-exact, so the same masks give the same bytes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workers.media import rle
from workers.media.encode import LOSSLESS_GRAY, FrameEncoder
from workers.media.exports.common import shown, size


def object_file(object_id: int) -> str:
    return f"{object_id}.mkv"


def write_object(document: dict, object_id: int, path: Path) -> None:
    height, width = size(document)
    encoder = FrameEncoder(path, width, height, document["video"]["fps_rational"], pix_fmt="gray",
                           output=LOSSLESS_GRAY)
    try:
        for entry in document["frames"]:
            matte = np.zeros((height, width), np.uint8)
            for obj in entry["objects"]:
                if obj["id"] == object_id and shown(obj):
                    matte[rle.decode(obj["segmentation"])] = 255
            encoder.write(matte)
    except BaseException:
        encoder.abort()
        raise
    encoder.close()


def write_objects(document: dict, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for obj in document["objects"]:
        write_object(document, obj["id"], folder / object_file(obj["id"]))
