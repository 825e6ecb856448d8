"""``davis.zip``: one indexed PNG per processed frame (``00012.png``, the source frame number),
pixel value = object id + 1, 0 the background, in the DAVIS palette that SA-V and SAM 2 write too.

Where masks overlap, the lower object id is drawn (SAM 2's ``vos_inference`` order). The archive is
the same bytes for the same masks: entries stored (PNGs are compressed already) in frame order, with
one fixed timestamp and mode.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.errors import ProcessingError
from workers.media import rle
from workers.media.exports.common import shown, size

# An 8-bit PNG holds labels 0..255: object ids 0..254.
MAX_OBJECT_ID = 254
# zip's earliest date: no build time in the archive.
ZIP_TIME = (1980, 1, 1, 0, 0, 0)


def _davis_palette() -> bytes:
    """The PASCAL VOC colour map DAVIS annotations use: label i's bits spread over R, G and B from
    the high bit down (1 = (128, 0, 0), 2 = (0, 128, 0), 3 = (128, 128, 0), ...)."""
    out = bytearray()
    for label in range(256):
        rgb, bits = [0, 0, 0], label
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
        out += bytes(rgb)
    return bytes(out)


DAVIS_PALETTE = _davis_palette()


def label_map(entry: dict, height: int, width: int) -> np.ndarray:
    """(H, W) uint8: object id + 1 where its mask is, the lowest id where masks overlap, else 0."""
    labels = np.zeros((height, width), np.uint8)
    for obj in sorted(entry["objects"], key=lambda o: o["id"], reverse=True):
        if shown(obj):
            labels[rle.decode(obj["segmentation"])] = obj["id"] + 1
    return labels


def png_bytes(labels: np.ndarray) -> bytes:
    image = Image.fromarray(labels, mode="P")
    image.putpalette(DAVIS_PALETTE)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_davis(document: dict, path: Path) -> None:
    too_high = [o["id"] for o in document["objects"] if o["id"] > MAX_OBJECT_ID]
    if too_high:
        raise ProcessingError(f"davis: object id {too_high[0]} does not fit an 8-bit indexed PNG "
                              f"(ids 0-{MAX_OBJECT_ID}); use coco, ytvis or objects for this video")
    height, width = size(document)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for entry in document["frames"]:
            item = zipfile.ZipInfo(f"{entry['frame']:05d}.png", date_time=ZIP_TIME)
            item.external_attr = 0o644 << 16
            archive.writestr(item, png_bytes(label_map(entry, height, width)))
