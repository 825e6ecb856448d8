# FROZEN ON PURPOSE: main at commit 038fd06's workers/model/tracker.py, the same-run baseline of
# benchmarks/bench_gpu.py. DO NOT EDIT, DO NOT REFACTOR, DO NOT DEDUPLICATE.
#
# bench_gpu.py times this per-frame loop (VideoTracker.push then prune, as 038fd06's
# workers/chunk.py ran it) beside the new frame engine in one run on one card, so a speed-up is
# measured against fixed code, not against whatever workers/model/tracker.py has become. The
# `duplicates` tool lists this file as a twin of workers/model/tracker.py: that is deliberate, leave it.
#
# The only change from `git show 038fd06:workers/model/tracker.py`: pipeline.errors has since moved to
# pipeline.core.errors (one import line). It still imports the live workers.model.loading.LoadedModel (a
# plain holder of the model, tokenizer and device) and workers.model.tokenizer.TEXT_MAX_TOKENS (32).
"""Run SAM 3 over a stream of frames: one inference session, frames pushed one at a time.

This mirrors ``Sam3VideoModel.propagate_in_video_iterator`` (non-streaming semantics: hotstart
delay and removal of unmatched/duplicate tracks stay on) but owns the hotstart output buffer, so
frames can be fed as they are decoded and a frame's output is final once its window has closed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.sam3_video.modeling_sam3_video import (
    Sam3VideoInferenceSession,
    Sam3VideoSegmentationOutput,
)
from transformers.models.sam3_video.processing_sam3_video import Sam3VideoProcessor

from pipeline.core.errors import InputError
from workers.model.loading import LoadedModel
from workers.model.tokenizer import TEXT_MAX_TOKENS

# SAM 3's image processor normalises with mean 0.5 / std 0.5 after scaling to [0, 1].
_MEAN = 0.5
_STD = 0.5

# Only its mask-overlap helpers are used; they read no processor attributes. The processor itself
# cannot be built here: its image processor needs torchvision, which has no build for torch 2.13 CPU.
_OVERLAP = Sam3VideoProcessor.__new__(Sam3VideoProcessor)


@dataclass
class FrameObjects:
    """The final objects of one frame, at the video's displayed size."""

    frame_idx: int
    object_ids: list[int]
    scores: list[float]
    prompts: list[str]
    masks: np.ndarray  # (N, H, W) bool


def check_prompts(tokenizer, prompts: list[str]) -> list[str]:
    """Refuse empty prompts and prompts the text encoder would have to truncate."""
    if not prompts:
        raise InputError("--prompt: at least one text prompt is required")
    cleaned = []
    for prompt in prompts:
        text = prompt.strip()
        if not text:
            raise InputError("--prompt: a prompt is empty or whitespace")
        n_tokens = len(tokenizer(text).input_ids)
        if n_tokens > TEXT_MAX_TOKENS:
            raise InputError(
                f"--prompt {text[:40]!r}...: {n_tokens} tokens, SAM 3's text encoder takes at most "
                f"{TEXT_MAX_TOKENS} (start and end tokens included); shorten it"
            )
        cleaned.append(text)
    return list(dict.fromkeys(cleaned))  # the same concept twice is one concept


def detection_thresholds(config, threshold: float) -> tuple[float, float]:
    """(score_threshold_detection, new_det_thresh) for a user's detection threshold.

    Detections scoring below the first are dropped; one must score the second to start a new
    object. Both move together, keeping the model's gap between them (0.5 and 0.7 for SAM 3), so
    a lower threshold both keeps weaker detections and lets them become objects.
    """
    gap = float(config.new_det_thresh) - float(config.score_threshold_detection)
    return float(threshold), min(1.0, max(0.0, float(threshold) + gap))


@contextlib.contextmanager
def model_thresholds(model, threshold: float | None) -> Iterator[None]:
    """Run the block with ``model``'s detection thresholds set for ``threshold``, then put back
    what was there. The model object is shared by every video a worker runs (one at a time), so a
    video's threshold must hold only while the model works on that video. None: the model's own.
    """
    if threshold is None:
        yield
        return
    saved = (model.score_threshold_detection, model.new_det_thresh)
    model.score_threshold_detection, model.new_det_thresh = detection_thresholds(model.config, threshold)
    try:
        yield
    finally:
        model.score_threshold_detection, model.new_det_thresh = saved


def preprocess(rgb: np.ndarray, image_size: int, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, S, S) float32, as Sam3ImageProcessor does (bilinear, antialiased)."""
    x = torch.from_numpy(rgb).to(device, non_blocking=True).permute(2, 0, 1).unsqueeze(0).float()
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return ((x / 255.0 - _MEAN) / _STD)[0]


class VideoTracker:
    """Feed frames in order with ``push``; get each frame's final objects once its window closes."""

    def __init__(self, loaded: LoadedModel, prompts: list[str], height: int, width: int,
                 state_device: str | torch.device | None = None, detection_threshold: float | None = None):
        self._loaded = loaded
        self._model = loaded.model
        self.height = height
        self.width = width
        # Applied around each model call only (model_thresholds); carried in the tracker state so
        # every chunk of a video runs with the threshold its first chunk had.
        self.detection_threshold = detection_threshold
        device = loaded.device
        self.session = Sam3VideoInferenceSession(
            video_height=height,
            video_width=width,
            inference_device=device,
            inference_state_device=state_device or device,
            video_storage_device=device,
            dtype=torch.float32,
        )
        for prompt in prompts:
            self._add_prompt(prompt)
        self.buffer: list[Sam3VideoSegmentationOutput] = []

    def _add_prompt(self, text: str) -> None:
        # What Sam3VideoProcessor.add_text_prompt does, without building the processor.
        prompt_id = self.session.add_prompt(text)
        encoded = self._loaded.tokenizer(
            text, return_tensors="pt", padding="max_length", max_length=TEXT_MAX_TOKENS
        ).to(self._loaded.device)
        self.session.prompt_input_ids[prompt_id] = encoded.input_ids
        self.session.prompt_attention_masks[prompt_id] = encoded.attention_mask

    def _autocast(self):
        dtype = self._loaded.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._loaded.device.type, dtype=dtype)

    @torch.inference_mode()
    def push(self, frame_idx: int, rgb: np.ndarray) -> list[FrameObjects]:
        pixels = preprocess(rgb, self._loaded.image_size, self._loaded.device)
        self.session.add_new_frame(pixels, frame_idx)
        with self._autocast(), model_thresholds(self._model, self.detection_threshold):
            out = self._model(inference_session=self.session, frame_idx=frame_idx)
        # The model never reads a past frame's pixels again; keep the key (num_frames counts keys).
        self.session.processed_frames[frame_idx] = None
        self.session.hotstart_removed_obj_ids.update(out.removed_obj_ids)
        self.buffer.append(out)
        delay = self._loaded.hotstart_delay
        finished: list[FrameObjects] = []
        while delay > 0 and len(self.buffer) >= delay:
            finished.append(self._finalise(self.buffer.pop(0)))
        if delay <= 0:
            finished.extend(self._finalise(o) for o in self.buffer)
            self.buffer.clear()
        return finished

    @torch.inference_mode()
    def flush(self) -> list[FrameObjects]:
        """End of the video: every buffered frame is final."""
        finished = [self._finalise(o) for o in self.buffer]
        self.buffer.clear()
        return finished

    def _finalise(self, out: Sam3VideoSegmentationOutput) -> FrameObjects:
        return postprocess(self.session, out, self.height, self.width)


def postprocess(session: Sam3VideoInferenceSession, out: Sam3VideoSegmentationOutput,
                height: int, width: int) -> FrameObjects:
    """Sam3VideoProcessor.postprocess_outputs, minus torchvision's boxes (RLE gives them later).

    Objects whose mask is empty after the non-overlap constraint are dropped: an entry with no
    pixels tells a user nothing.
    """
    obj_ids = sorted(out.obj_id_to_mask.keys())
    hidden = set(out.suppressed_obj_ids or ()) | set(session.hotstart_removed_obj_ids)
    obj_ids = [i for i in obj_ids if i not in hidden]
    if not obj_ids:
        return FrameObjects(out.frame_idx, [], [], [], np.zeros((0, height, width), dtype=bool))
    low_res = torch.cat([out.obj_id_to_mask[i] for i in obj_ids], dim=0).float()
    logits = F.interpolate(low_res.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
    masks = logits.squeeze(1) > 0
    keep = masks.flatten(1).any(dim=1).cpu().tolist()
    obj_ids = [i for i, k in zip(obj_ids, keep) if k]
    masks = masks[torch.tensor(keep, device=masks.device)]
    if len(obj_ids) > 1:
        tracker_scores = torch.tensor(
            [float(out.obj_id_to_tracker_score.get(i, 0.0)) for i in obj_ids], device=masks.device
        )
        prompt_ids = [session.obj_id_to_prompt_id[i] for i in obj_ids]
        masks = _OVERLAP._apply_object_wise_non_overlapping_constraints(
            masks.unsqueeze(1), tracker_scores.unsqueeze(1), background_value=0, prompt_ids=prompt_ids
        ).squeeze(1) > 0
        nonempty = masks.flatten(1).any(dim=1).cpu().tolist()
        obj_ids = [i for i, k in zip(obj_ids, nonempty) if k]
        masks = masks[torch.tensor(nonempty, device=masks.device)]
    scores = [min(1.0, max(0.0, float(out.obj_id_to_score[i]))) for i in obj_ids]
    prompts = [session.prompts[session.obj_id_to_prompt_id[i]] for i in obj_ids]
    return FrameObjects(out.frame_idx, obj_ids, scores, prompts, masks.cpu().numpy())
