"""COCO RLE for per-frame masks (pycocotools, compressed counts)."""

from __future__ import annotations

import numpy as np
from pycocotools import mask as mask_utils


def encode(mask: np.ndarray) -> dict:
    """(H, W) bool -> {"size": [h, w], "counts": "<compressed RLE string>"}."""
    # A bool array reinterpreted as uint8 costs nothing; only the column-major copy remains.
    as_bytes = mask.view(np.uint8) if mask.dtype == np.bool_ else mask.astype(np.uint8)
    rle = mask_utils.encode(np.asfortranarray(as_bytes))
    return {"size": [int(rle["size"][0]), int(rle["size"][1])], "counts": rle["counts"].decode("ascii")}


def bbox(rle: dict) -> list[float]:
    """[x, y, w, h] in float pixels, from the RLE itself so the two always agree."""
    coco = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return [float(v) for v in mask_utils.toBbox(coco)]


def area(rle: dict) -> int:
    """Pixels the mask covers, counted on the RLE itself (nothing decoded)."""
    return int(mask_utils.area({"size": rle["size"], "counts": rle["counts"].encode("ascii")}))


def decode(rle: dict) -> np.ndarray:
    """Inverse of ``encode``: (H, W) bool."""
    coco = {"size": rle["size"], "counts": rle["counts"].encode("ascii")}
    return mask_utils.decode(coco).astype(bool)
