"""A frame's vision features, computed ahead of its tracking step and for many frames at once.

SAM 3's detector backbone (and the tracker's neck on top of it) reads only the frame's pixels,
never the tracker's state, yet transformers computes them inside the per-frame step
(``Sam3VideoModel._det_track_one_frame``), one frame at a time. Batched, the backbone costs about a
third per frame on an H200 (ARCHITECTURE.md, "GPU"). ``compute`` runs it for a stack of frames;
``step_model`` gives one video's step a model object that uses one frame's features instead of
computing them again.

The two model methods that compute them are the only seam transformers offers. They are replaced
on a per-step copy of the model object (``step_model``), never on the shared model, together
with the video's detection thresholds: several videos' steps may run at once on one model.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass

import torch
from transformers.utils import ModelOutput


@dataclass(frozen=True)
class FrameFeatures:
    """One frame's detector backbone output and the tracker's features derived from it (batch 1)."""

    vision_embeds: ModelOutput
    tracker_feats: list[torch.Tensor]  # HW x 1 x C per level, as the tracker reads them
    tracker_pos: list[torch.Tensor]

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor it holds (to hand them over between CUDA streams)."""
        found = list(self.tracker_feats) + list(self.tracker_pos)
        for value in self.vision_embeds.values():
            found += _tensors(value)
        return found


def _tensors(value) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    return []


def _row(value, i: int, batch: int, dim: int):
    """Frame ``i``'s slice of a batched tensor (or tuple/list of tensors) along ``dim``, as its own
    copy: a view would keep the whole batch's memory alive as long as any one frame's features."""
    if isinstance(value, torch.Tensor):
        return value.narrow(dim, i, 1).clone() if value.dim() > dim and value.shape[dim] == batch else value
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
        return type(value)(_row(v, i, batch, dim) for v in value)
    return value


def compute(model, pixels: torch.Tensor) -> list[FrameFeatures]:
    """Features of each frame of ``pixels`` (N, 3, S, S), in one call of the backbone and the neck;
    each frame's own tensors (the batch's are freed on return)."""
    embeds = model.detector_model.get_vision_features(pixel_values=pixels)
    feats, pos = model.get_vision_features_for_tracker(vision_embeds=embeds)
    batch = pixels.shape[0]
    if batch == 1:
        return [FrameFeatures(embeds, feats, pos)]
    out = []
    for i in range(batch):
        sliced = type(embeds)(**{k: _row(v, i, batch, 0) for k, v in embeds.items()})
        out.append(FrameFeatures(sliced, _row(feats, i, batch, 1), _row(pos, i, batch, 1)))
    return out


def _own(module: torch.nn.Module) -> torch.nn.Module:
    """A shallow copy of ``module`` with its own attribute and submodule tables: attributes set on it
    (or submodules replaced) stay on it; parameters, buffers and the submodules' weights are shared."""
    mine = copy.copy(module)
    object.__setattr__(mine, "_modules", dict(module._modules))
    return mine


def step_model(model: torch.nn.Module, thresholds: tuple[float, float] | None,
               features: FrameFeatures | None, exemplars: tuple[list, list] | None = None) -> torch.nn.Module:
    """The model object for one video's step: ``model``'s weights, with the video's detection
    thresholds ``(score_threshold_detection, new_det_thresh)`` (None: the model's own), the
    frame's precomputed ``features`` (None: it computes its own, as transformers does) and the
    frame's ``exemplars`` (boxes as normalised cx, cy, w, h; labels 1/0), which the detector reads
    beside every text prompt on this frame: SAM 3's geometry prompt, which ``Sam3Model`` takes
    (``input_boxes``, ``input_boxes_labels``) but ``Sam3VideoModel.run_detection`` never passes.

    Made for each step (a dictionary copy), so anything set on the shared model (a benchmark's
    detection cap) is seen by the next step, and nothing a step sets reaches another video.
    """
    mine = _own(model)
    if thresholds is not None:
        mine.score_threshold_detection, mine.new_det_thresh = thresholds
    if features is not None:
        detector = _own(model.detector_model)

        def vision(pixel_values=None, **kwargs):
            return features.vision_embeds

        def tracker(vision_embeds):
            return features.tracker_feats, features.tracker_pos

        detector.get_vision_features = vision
        mine._modules["detector_model"] = detector
        mine.get_vision_features_for_tracker = tracker
    if exemplars is not None:
        detector = _own(mine.detector_model)
        boxes, labels = exemplars
        device = next(model.parameters()).device
        # nn.Module.__call__ reads ``forward`` on the instance first: only this step's detector changes.
        detector.forward = functools.partial(
            detector.forward, input_boxes=torch.tensor([boxes], dtype=torch.float32, device=device),
            input_boxes_labels=torch.tensor([labels], dtype=torch.long, device=device))
        mine._modules["detector_model"] = detector
    return mine
