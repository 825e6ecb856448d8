"""Object labels on the overlay: "<id> <prompt>" near each object, in the object's colour.

The text is drawn in the object's palette colour with a thick outline in black or white, whichever
contrasts with that colour, so a label reads on light and on dark footage alike. A label's pixels
are rendered once (Pillow's bundled FreeType font: no system font is needed) and cached as two
alpha masks; drawing it on a frame is then two small integer blends, a few microseconds a label.
"""

from __future__ import annotations

import functools

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAX_LABEL_CHARS = 32  # a long prompt is cut: the label must not cover the frame


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def label_size(height: int) -> int:
    """Font size in pixels for a frame ``height`` rows high: readable at 240p, not huge at 4K."""
    return max(13, height // 30)


def label_text(object_id: int, prompt: str | dict | list | None) -> str:
    # A visual object's prompt is a description (a box, points, a mask on a frame): its id says enough.
    text = f"{object_id} {prompt}" if isinstance(prompt, str) and prompt else str(object_id)
    return text if len(text) <= MAX_LABEL_CHARS else text[:MAX_LABEL_CHARS - 1] + "\u2026"


def outline_color(color: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black around a light colour, white around a dark one (BT.601 luma)."""
    r, g, b = color
    return (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b >= 128 else (255, 255, 255)


@functools.lru_cache(maxsize=1024)
def sprite(text: str, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(outline alpha, text alpha), uint16 in 0..256, of ``text`` at ``size``; the outline alpha
    covers the text too, so blending outline then text leaves a ring of outline colour."""
    font = _font(size)
    stroke = max(1, size // 8)
    left, top, right, bottom = ImageDraw.Draw(Image.new("L", (1, 1))).textbbox((0, 0), text, font=font,
                                                                                  stroke_width=stroke)
    shape = (right - left + 2, bottom - top + 2)
    layers = []
    for width in (stroke, 0):
        image = Image.new("L", shape)
        ImageDraw.Draw(image).text((1 - left, 1 - top), text, font=font, fill=255, stroke_width=width,
                                   stroke_fill=255)
        # 0..255 -> 0..256, anti-aliased edges strengthened by half: small glyphs' cores reach full
        # coverage (the exact colour) instead of a blend with whatever is behind them.
        alpha = np.asarray(image, dtype=np.uint16)
        layers.append(np.minimum(alpha * 3 // 2, 256).astype(np.uint16))
    return layers[0], layers[1]


Rect = tuple[int, int, int, int]  # y, x, h, w


def _overlaps(a: Rect, b: Rect) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def place(box: tuple[slice, slice], shape: tuple[int, int], frame: tuple[int, int],
          taken: list[Rect] | None = None) -> tuple[int, int]:
    """Top-left corner of a label of ``shape`` for an object in ``box``: just above the object's box,
    or inside its top edge when there is no room above; moved down past labels already ``taken``
    (objects whose boxes start at the same place); always inside the frame."""
    rows, cols = box
    h, w = shape
    y = rows.start - h if rows.start - h >= 0 else rows.start
    x = min(max(cols.start, 0), max(frame[1] - w, 0))
    for _ in range(len(taken or ())):
        clash = next((t for t in taken if _overlaps((y, x, h, w), t)), None)
        if clash is None:
            break
        y = clash[0] + clash[2]
    y = min(max(y, 0), max(frame[0] - h, 0))
    return y, x


def _blend(region: np.ndarray, alpha: np.ndarray, color: tuple[int, int, int]) -> None:
    """``region`` (h, w, 3) uint8 in place: ``region * (256 - a) + color * a``, a in 0..256."""
    a = alpha[..., None]
    tint = np.asarray(color, dtype=np.uint16)
    region[...] = ((region.astype(np.uint16) * (256 - a) + tint * a + 128) >> 8).astype(np.uint8)


def draw_label(rgb: np.ndarray, box: tuple[slice, slice], text: str, color: tuple[int, int, int],
               taken: list[Rect] | None = None) -> None:
    """Draw ``text`` for the object in ``box`` onto ``rgb`` (H, W, 3) in place; its rectangle is
    added to ``taken`` (the labels drawn on this frame so far)."""
    height, width = rgb.shape[:2]
    ring, core = sprite(text, label_size(height))
    h, w = min(ring.shape[0], height), min(ring.shape[1], width)
    y, x = place(box, (h, w), (height, width), taken)
    if taken is not None:
        taken.append((y, x, h, w))
    region = rgb[y:y + h, x:x + w]
    _blend(region, ring[:h, :w], outline_color(color))
    _blend(region, core[:h, :w], color)
