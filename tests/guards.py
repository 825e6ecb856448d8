"""Guards against vacuous passes: a comparison of two outputs, or a check run over every object,
holds trivially when the model found nothing. Tests call these first, so that they fail when the
model's output is empty instead of passing on it."""

from __future__ import annotations

from pathlib import Path

from tests import ffprobe_util as fp
from workers.media import rle


def assert_found_objects(doc: dict) -> None:
    """``doc`` (a masks.json document) lists an object and has a frame where a mask covers pixels."""
    assert doc["objects"], "masks.json lists no object: the checks on it would hold on empty output"
    assert any(rle.decode(obj["segmentation"]).any() for f in doc["frames"] for obj in f["objects"]), \
        "no frame of masks.json has a non-empty mask"


def assert_not_all_black(video: Path, width: int, height: int) -> None:
    """A mask video with at least one white pixel: a video of empty masks is all black."""
    frames = fp.frames_rgb(video, width, height)
    assert (frames.max(axis=3) > 127).any(), f"{video.name} is all black: every mask in it is empty"

