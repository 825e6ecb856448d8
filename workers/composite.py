"""Draw masks onto decoded frames: translucent colored overlay, or white-on-black mask frames."""

from __future__ import annotations

import numpy as np

from workers.palette import color_for

DEFAULT_OPACITY = 0.5


def _box_slices(mask: np.ndarray, bbox: list[float] | None) -> tuple[slice, slice] | None:
    if bbox is None:
        rows = np.flatnonzero(mask.any(axis=1))
        if rows.size == 0:
            return None
        cols = np.flatnonzero(mask.any(axis=0))
        return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)
    x, y, w, h = (int(round(v)) for v in bbox)
    if w <= 0 or h <= 0:
        return None
    return slice(y, y + h), slice(x, x + w)


def overlay(rgb: np.ndarray, object_ids: list[int], masks: np.ndarray, opacity: float = DEFAULT_OPACITY,
            bboxes: list[list[float]] | None = None, in_place: bool = False) -> np.ndarray:
    """Blend each object's palette color over its pixels: ``src * (1 - a) + color * a``.

    Masks do not overlap (SAM 3 resolves that). Work is confined to each object's box (``bboxes``
    [x, y, w, h], e.g. from the RLE, saves finding it again) and done in integer arithmetic with a
    masked copy rather than gather/scatter. ``in_place`` draws on ``rgb`` itself (the render stage
    owns its decoded frames and saves a full-frame copy).
    """
    out = rgb if in_place else rgb.copy()
    weight = int(round(opacity * 256))
    for k, (obj_id, mask) in enumerate(zip(object_ids, masks)):
        box = _box_slices(mask, bboxes[k] if bboxes is not None else None)
        if box is None:
            continue
        crop = out[box]
        tint = np.asarray(color_for(obj_id), dtype=np.uint16) * weight + 128
        blended = ((crop.astype(np.uint16) * (256 - weight) + tint) >> 8).astype(np.uint8)
        np.copyto(crop, blended, where=mask[box][..., None])
    return out


def mask_frame(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Union of all objects as a (H, W) gray frame: 255 on objects, 0 elsewhere."""
    if len(masks) == 0:
        return np.zeros((height, width), dtype=np.uint8)
    union = np.logical_or.reduce(masks, axis=0) if len(masks) > 1 else masks[0]
    return union.view(np.uint8) * np.uint8(255)
