"""Draw masks onto decoded frames: translucent colored overlay, or white-on-black mask frames."""

from __future__ import annotations

import numpy as np

from workers.media.palette import color_for

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


def rgb_to_yuv601(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """BT.601 limited range, the matrix swscale uses for untagged rgb24 <-> yuv420p."""
    r, g, b = color
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return round(y), round(u), round(v)


def _blend_plane(plane: np.ndarray, mask: np.ndarray, value: int, weight: int) -> None:
    blended = ((plane.astype(np.uint16) * (256 - weight) + (value * weight + 128)) >> 8).astype(np.uint8)
    np.copyto(plane, blended, where=mask)


def overlay_yuv(yuv: np.ndarray, object_ids: list[int], masks: np.ndarray, opacity: float = DEFAULT_OPACITY,
                bboxes: list[list[float]] | None = None) -> np.ndarray:
    """The same blend as ``overlay``, drawn in place on a planar I420 picture ((H * 3 // 2, W)).

    Blending commutes with the (affine) RGB -> YUV transform, so tinting Y, U and V with the
    palette color's YUV gives the RGB blend; chroma takes the mask at its own half resolution.
    """
    height, width = masks.shape[1:] if len(masks) else (yuv.shape[0] * 2 // 3, yuv.shape[1])
    luma = yuv[:height]
    quarter = height // 4
    u = yuv[height:height + quarter].reshape(height // 2, width // 2)
    v = yuv[height + quarter:height + 2 * quarter].reshape(height // 2, width // 2)
    weight = int(round(opacity * 256))
    for k, (obj_id, mask) in enumerate(zip(object_ids, masks)):
        box = _box_slices(mask, bboxes[k] if bboxes is not None else None)
        if box is None:
            continue
        cy, cu, cv = rgb_to_yuv601(color_for(obj_id))
        _blend_plane(luma[box], mask[box], cy, weight)
        rows, cols = box
        cbox = (slice(rows.start // 2, (rows.stop + 1) // 2), slice(cols.start // 2, (cols.stop + 1) // 2))
        chroma_mask = mask[::2, ::2][cbox]
        _blend_plane(u[cbox], chroma_mask, cu, weight)
        _blend_plane(v[cbox], chroma_mask, cv, weight)
    return yuv


def mask_frame(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Union of all objects as a (H, W) gray frame: 255 on objects, 0 elsewhere."""
    if len(masks) == 0:
        return np.zeros((height, width), dtype=np.uint8)
    union = np.logical_or.reduce(masks, axis=0) if len(masks) > 1 else masks[0]
    return union.view(np.uint8) * np.uint8(255)
