"""Draw masks onto decoded frames: translucent colored overlay, or white-on-black mask frames.

The overlay's style (``OverlayStyle``): a translucent fill (the default), an opaque outline along
each object's edge, or both, and optionally a label per object (``workers.media.labels``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.media.labels import draw_label, label_text
from workers.media.palette import color_for

DEFAULT_OPACITY = 0.5


@dataclass(frozen=True)
class OverlayStyle:
    fill: bool = True
    outline: bool = False
    labels: bool = False

    @classmethod
    def of(cls, overlay_style: str = "fill", labels: bool = False) -> OverlayStyle:
        """From the options' spelling (``VideoOptions.overlay_style``: fill, outline or both)."""
        return cls(fill=overlay_style in ("fill", "both"), outline=overlay_style in ("outline", "both"),
                   labels=labels)

    @property
    def plain(self) -> bool:
        """Today's fill alone: the only style the yuv420p path draws (``overlay_yuv``)."""
        return self == FILL


FILL = OverlayStyle()


def outline_width(height: int, width: int) -> int:
    """Edge thickness in pixels: 2 at 480p and below, about 4 at 1080p."""
    return max(2, round(min(height, width) / 270))


def edge_mask(mask: np.ndarray, thickness: int) -> np.ndarray:
    """The pixels of ``mask`` within ``thickness`` (4-connected steps) of its border: the mask minus
    its erosion. Pixels beyond the array count as outside, so an object cut by the frame's border
    is outlined there too. Shifted slices, no per-pixel Python."""
    inner = mask
    for _ in range(thickness):
        padded = np.pad(inner, 1)
        inner = (padded[1:-1, 1:-1] & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2]
                 & padded[1:-1, 2:])
    return mask & ~inner


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
            bboxes: list[list[float]] | None = None, in_place: bool = False, style: OverlayStyle = FILL,
            prompts: list[str | None] | None = None) -> np.ndarray:
    """Blend each object's palette color over its pixels: ``src * (1 - a) + color * a``.

    Masks do not overlap (SAM 3 resolves that). Work is confined to each object's box (``bboxes``
    [x, y, w, h], e.g. from the RLE, saves finding it again) and done in integer arithmetic with a
    masked copy rather than gather/scatter. ``in_place`` draws on ``rgb`` itself (the render stage
    owns its decoded frames and saves a full-frame copy).

    ``style``: fill and/or outline (the outline opaque, over the fill) and labels, drawn after
    every object so no fill covers a label; ``prompts[k]`` names object k in its label.
    """
    out = rgb if in_place else rgb.copy()
    weight = int(round(opacity * 256))
    thickness = outline_width(*rgb.shape[:2])
    boxes = []
    for k, (obj_id, mask) in enumerate(zip(object_ids, masks)):
        box = _box_slices(mask, bboxes[k] if bboxes is not None else None)
        boxes.append(box)
        if box is None:
            continue
        crop = out[box]
        if style.fill:
            tint = np.asarray(color_for(obj_id), dtype=np.uint16) * weight + 128
            blended = ((crop.astype(np.uint16) * (256 - weight) + tint) >> 8).astype(np.uint8)
            np.copyto(crop, blended, where=mask[box][..., None])
        if style.outline:
            np.copyto(crop, np.asarray(color_for(obj_id), dtype=np.uint8),
                      where=edge_mask(mask[box], thickness)[..., None])
    if style.labels:
        taken: list = []
        for k, (obj_id, box) in enumerate(zip(object_ids, boxes)):
            if box is not None:
                draw_label(out, box, label_text(obj_id, prompts[k] if prompts else None), color_for(obj_id), taken)
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
