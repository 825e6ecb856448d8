"""Draw masks onto decoded frames: translucent colored overlay, or white-on-black mask frames."""

from __future__ import annotations

import numpy as np

from workers.palette import color_for

DEFAULT_OPACITY = 0.5


def overlay(rgb: np.ndarray, object_ids: list[int], masks: np.ndarray, opacity: float = DEFAULT_OPACITY) -> np.ndarray:
    """Blend each object's palette color over its pixels. Masks do not overlap (SAM 3 resolves that)."""
    out = rgb.copy()
    for obj_id, mask in zip(object_ids, masks):
        if not mask.any():
            continue
        color = np.asarray(color_for(obj_id), dtype=np.float32)
        pixels = out[mask].astype(np.float32)
        out[mask] = (pixels * (1.0 - opacity) + color * opacity + 0.5).astype(np.uint8)
    return out


def mask_frame(masks: np.ndarray, height: int, width: int) -> np.ndarray:
    """Union of all objects, white on black, as an RGB frame."""
    union = masks.any(axis=0) if len(masks) else np.zeros((height, width), dtype=bool)
    out = np.zeros((height, width, 3), dtype=np.uint8)
    out[union] = 255
    return out
