"""One frame's final objects: the record the model hands to the media room (render, masks document).

It lives here, not with the tracker, so that writing outputs never imports torch or transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class FrameObjects:
    """The final objects of one frame, at the video's displayed size."""

    frame_idx: int
    object_ids: list[int]
    scores: list[float]
    prompts: list[str]
    masks: np.ndarray  # (N, H, W) bool
