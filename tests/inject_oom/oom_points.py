"""CUDA's out-of-memory error, raised once at one place of a chunk's work, as a real card would
when several streams share it. Used in-process by tests (``patch``) and, through this folder's
``sitecustomize``, by a test's GPU worker. Nothing here is imported by sam3v itself.

Places (``PLACES``):
- ``step``: the tracker step of model frame ``frame``;
- ``pixels``: preparing the ``frame``-th decoded frame this process pushes (counted from 0);
- ``restore``: a chunk's tracker state restored onto the device, just after it got there;
- ``flush``: the tracker's flush at the end of the video.
Each fires once per ``mark`` file (it writes the file when it fires).
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import torch

PLACES = ("step", "pixels", "restore", "flush")


def _fire(mark: Path, place: str) -> None:
    mark.write_text(f"{place} {os.getpid()}")
    raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate 2.00 GiB (injected by a test: {place})")


def patch(place: str, frame: int, mark: Path) -> tuple[object, str, object]:
    """(owner, attribute, replacement): setting it makes ``place`` run out of memory once."""
    from workers.model.state_codec import TrackerState
    from workers.model.tracker import VideoTracker

    if place == "step":
        real_step = VideoTracker.step

        def step(self, frame_idx, pixels, features=None):
            if frame_idx == frame and not mark.exists():
                _fire(mark, place)
            return real_step(self, frame_idx, pixels, features)

        return VideoTracker, "step", step
    if place == "pixels":
        real_pixels, counted = VideoTracker.pixels, itertools.count()

        def pixels(self, rgb):
            if next(counted) == frame and not mark.exists():
                _fire(mark, place)
            return real_pixels(self, rgb)

        return VideoTracker, "pixels", pixels
    if place == "restore":
        real_restore = TrackerState.restore

        def restore(self, loaded, *args, **kwargs):  # whatever restore takes (visual objects, ...)
            tracker = real_restore(self, loaded, *args, **kwargs)
            if not mark.exists():
                _fire(mark, place)
            return tracker

        return TrackerState, "restore", restore
    if place == "flush":
        real_flush = VideoTracker.flush

        def flush(self):
            if not mark.exists():
                _fire(mark, place)
            return real_flush(self)

        return VideoTracker, "flush", flush
    raise ValueError(f"unknown place {place!r}; one of {PLACES}")


def install_from_environment() -> None:
    """SAM3V_TEST_OOM_AT (default step), SAM3V_TEST_OOM_FRAME, SAM3V_TEST_OOM_MARK."""
    owner, name, replacement = patch(os.environ.get("SAM3V_TEST_OOM_AT", "step"),
                                     int(os.environ.get("SAM3V_TEST_OOM_FRAME", "0")),
                                     Path(os.environ["SAM3V_TEST_OOM_MARK"]))
    setattr(owner, name, replacement)
