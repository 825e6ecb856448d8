"""Three small overlay thumbnails of a video, for the job's report (``pipeline.core.report``).

The first, middle and last processed frame that has an object (of all processed frames when none
has), decoded again from the source, drawn in the video's overlay style from masks.json's RLE and
scaled to ``WIDTH`` pixels wide as WebP: 1.6-3.6 KB each (measured on the real clips with the tiny
model's busy masks), about 20 MB for a report page of 2,000 videos.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipeline.core.errors import InputError
from workers.media import rle
from workers.media.composite import OverlayStyle, overlay
from workers.media.decode import open_reader
from workers.media.probe import VideoInfo

WIDTH = 160
QUALITY = 50


def pick_frames(frames: list[dict]) -> list[dict]:
    """The entries to show: first, middle and last with objects (fewer when fewer differ)."""
    pool = [entry for entry in frames if entry["objects"]] or frames
    if not pool:
        return []
    picks = [pool[0], pool[len(pool) // 2], pool[-1]]
    return list({entry["frame"]: entry for entry in picks}.values())


def _frame_rgb(info: VideoInfo, index: int) -> np.ndarray | None:
    """Frame ``index`` again; None when it no longer decodes (the report shows fewer thumbnails,
    the video's outputs do not depend on them)."""
    try:
        with open_reader(info, start=index, count=1) as reader:
            for frame in reader:
                return frame.rgb
    except InputError:
        return None
    return None


def thumbnail(rgb: np.ndarray, entry: dict, opacity: float, style: OverlayStyle, prompts: dict[int, str]) -> bytes:
    """One frame drawn like the overlay and scaled down: WebP bytes."""
    objects = entry["objects"]
    height, width = rgb.shape[:2]
    masks = (np.stack([rle.decode(o["segmentation"]) for o in objects]) if objects
             else np.zeros((0, height, width), dtype=bool))
    ids = [o["id"] for o in objects]
    drawn = overlay(rgb, ids, masks, opacity, [o["bbox"] for o in objects], style=style,
                    prompts=[prompts.get(i) for i in ids])
    image = Image.fromarray(drawn)
    image = image.resize((WIDTH, max(1, round(height * WIDTH / width))), Image.Resampling.BOX)
    out = io.BytesIO()
    image.save(out, "WEBP", quality=QUALITY)
    return out.getvalue()


def video_thumbnails(info: VideoInfo, document: dict) -> list[bytes]:
    """Thumbnails of a finished masks.json ``document`` (``build_document``) of the video ``info``."""
    params = document["params"]
    style = OverlayStyle.of(params.get("overlay_style") or "fill", bool(params.get("labels")))
    opacity = params.get("mask_opacity", 0.5)
    prompts = {o["id"]: o["prompt"] for o in document["objects"]}
    out = []
    for entry in pick_frames(document["frames"]):
        rgb = _frame_rgb(info, entry["frame"])
        if rgb is not None:
            out.append(thumbnail(rgb, entry, opacity, style, prompts))
    return out
