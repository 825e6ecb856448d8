"""A frame's vision features, computed ahead of its tracking step and for many frames at once.

SAM 3's detector backbone (and the tracker's neck on top of it) reads only the frame's pixels,
never the tracker's state, yet transformers computes them inside the per-frame step
(``Sam3VideoModel._det_track_one_frame``), one frame at a time. Batched, the backbone costs about a
third per frame on an H200 (ARCHITECTURE.md, "GPU"). ``compute`` runs it for a stack of frames;
``provided`` makes the model's next step use one frame's slice instead of computing it again.

The two model methods that compute them are the only seam transformers offers; ``provided``
replaces them on the model instance for the duration of one step and puts them back after. The
engine runs one step at a time per model (``workers.engine``), so a slot per model is enough.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass(frozen=True)
class FrameFeatures:
    """One frame's detector backbone output and the tracker's features derived from it (batch 1)."""

    vision_embeds: ModelOutput
    tracker_feats: list[torch.Tensor]  # HW x 1 x C per level, as the tracker reads them
    tracker_pos: list[torch.Tensor]


def _row(value, i: int, batch: int, dim: int):
    """Frame ``i``'s slice of a batched tensor (or tuple/list of tensors) along ``dim``."""
    if isinstance(value, torch.Tensor):
        return value.narrow(dim, i, 1) if value.dim() > dim and value.shape[dim] == batch else value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return type(value)(_row(v, i, batch, dim) for v in value)
    return value


def compute(model, pixels: torch.Tensor) -> list[FrameFeatures]:
    """Features of each frame of ``pixels`` (N, 3, S, S), in one call of the backbone and the neck."""
    embeds = _ORIGINALS.vision(model)(pixel_values=pixels)
    feats, pos = _ORIGINALS.tracker(model)(vision_embeds=embeds)
    batch = pixels.shape[0]
    out = []
    for i in range(batch):
        sliced = type(embeds)(**{k: _row(v, i, batch, 0) for k, v in embeds.items()})
        out.append(FrameFeatures(sliced, _row(feats, i, batch, 1), _row(pos, i, batch, 1)))
    return out


class _Originals:
    """The model's own methods, kept before ``provided`` first replaces them."""

    def __init__(self):
        self._lock = threading.Lock()

    def install(self, model) -> None:
        with self._lock:
            if getattr(model, "_sam3v_features_slot", None) is not None:
                return
            model._sam3v_features_slot = _Slot(model.detector_model.get_vision_features,
                                                model.get_vision_features_for_tracker)
            slot = model._sam3v_features_slot
            model.detector_model.get_vision_features = slot.vision
            model.get_vision_features_for_tracker = slot.tracker

    def vision(self, model):
        slot = getattr(model, "_sam3v_features_slot", None)
        return slot.own_vision if slot else model.detector_model.get_vision_features

    def tracker(self, model):
        slot = getattr(model, "_sam3v_features_slot", None)
        return slot.own_tracker if slot else model.get_vision_features_for_tracker


class _Slot:
    """Hands the step the frame's precomputed features, or computes them as transformers would."""

    def __init__(self, own_vision, own_tracker):
        self.own_vision, self.own_tracker = own_vision, own_tracker
        self.ready: FrameFeatures | None = None

    def vision(self, pixel_values=None, **kwargs):
        return self.ready.vision_embeds if self.ready is not None else self.own_vision(pixel_values=pixel_values, **kwargs)

    def tracker(self, vision_embeds):
        if self.ready is not None:
            return self.ready.tracker_feats, self.ready.tracker_pos
        return self.own_tracker(vision_embeds=vision_embeds)


_ORIGINALS = _Originals()


@contextlib.contextmanager
def provided(model, features: FrameFeatures | None) -> Iterator[None]:
    """The model's next step uses ``features`` (None: it computes its own, as transformers does)."""
    _ORIGINALS.install(model)
    slot = model._sam3v_features_slot
    slot.ready = features
    try:
        yield
    finally:
        slot.ready = None
