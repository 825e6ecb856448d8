"""Run SAM 3 over a stream of frames: one inference session, frames pushed one at a time.

This mirrors ``Sam3VideoModel.propagate_in_video_iterator`` (non-streaming semantics: hotstart
delay and removal of unmatched/duplicate tracks stay on) but owns the hotstart output buffer, so
frames can be fed as they are decoded and a frame's output is final once its window has closed.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.sam3_video.modeling_sam3_video import (
    Sam3VideoInferenceSession,
    Sam3VideoSegmentationOutput,
)

from pipeline.core.errors import InputError
from workers.media.frame_objects import FrameObjects
from workers.model import frame_features
from workers.model.frame_features import FrameFeatures, step_model
from workers.model.loading import LoadedModel
from workers.model.tokenizer import TEXT_MAX_TOKENS
from workers.model.visual_objects import VisualObject, max_visual_id
from workers.model.visual_tracker import VisualSession, merge

# SAM 3's image processor normalises with mean 0.5 / std 0.5 after scaling to [0, 1].
_MEAN = 0.5
_STD = 0.5


def check_prompts(tokenizer, prompts: list[str], visual: bool = False, exemplars: bool = False) -> list[str]:
    """Refuse empty prompts and prompts the text encoder would have to truncate; no text prompt at
    all only when the video has visual prompts (``visual``: objects). Exemplars sharpen a text
    concept: without one they are refused (transformers 5.24's ``Sam3VideoModel`` detects text
    concepts only; a box-only concept is not in its video path)."""
    if exemplars and not prompts:
        raise InputError("exemplars: an exemplar sharpens a text prompt on its frame; give a text prompt too "
                         "(--prompt): a concept given by boxes alone is not supported")
    if not prompts and not visual:
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


def preprocess(rgb: np.ndarray, image_size: int, device: torch.device) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, S, S) float32, as Sam3ImageProcessor does (bilinear, antialiased)."""
    x = torch.from_numpy(rgb).to(device, non_blocking=True).permute(2, 0, 1).unsqueeze(0).float()
    x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", antialias=True, align_corners=False)
    return ((x / 255.0 - _MEAN) / _STD)[0]


class VideoTracker:
    """Feed frames in order with ``push``; get each frame's final objects once its window closes.

    ``visual``: objects given as points, boxes or masks, tracked forwards by SAM 3's interactive
    tracker on the same frames' features (``workers.model.visual_tracker``) and written with the
    text-found objects of their frame; ``backward``: their masks on frames before their first
    prompt, by model frame, from the backward pass (``workers.chunks.backward_pass``); ``num_frames``:
    the frames the run will process (the visual tracker's object-pointer window); ``exemplars``:
    boxes by model frame that the detector reads beside the text prompts on that frame only (as
    Meta's video predictor gives a frame's boxes to its detector; ``visual_objects.exemplar_boxes``).
    Text-found
    objects are numbered after the visual ones. Without text prompts only the visual objects run
    (the frames still close after the hotstart delay, as with text).
    """

    def __init__(self, loaded: LoadedModel, prompts: list[str], height: int, width: int,
                 state_device: str | torch.device | None = None, detection_threshold: float | None = None,
                 visual: list[VisualObject] | None = None, backward: dict[int, FrameObjects] | None = None,
                 num_frames: int | None = None, exemplars: dict[int, tuple[list, list]] | None = None):
        self._loaded = loaded
        self._model = loaded.model
        self.height = height
        self.width = width
        # Set on each step's own model object (``step_model``), never on the shared model; carried
        # in the tracker state so every chunk of a video runs with the threshold its first chunk had.
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
        # The visual session numbers the video as transformers' interactive tracker does when it holds
        # the whole video (``num_frames``: the frames processed; None: unknown, counted as pushed).
        self.visual = VisualSession(loaded, visual, height, width, frames=range(num_frames) if num_frames else None,
                                    state_device=state_device) if visual else None
        if visual:
            self.session.max_obj_id = max(self.session.max_obj_id, max_visual_id(visual))
        self.backward = dict(backward or {})
        # Inputs, not state: a restored tracker is given them again (the chunk runner).
        self.exemplars = dict(exemplars or {})
        self._visual_found: dict[int, FrameObjects] = {}  # forward masks of frames still in the buffer

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

    def object_cap_warning(self) -> str | None:
        """A warning for the video when the tracker holds as many objects as SAM 3 tracks at once
        (``max_num_objects``): new detections beyond it are dropped, so objects may be missing."""
        cap = self._model.max_num_objects
        if len(self.session.obj_ids) < cap:
            return None
        return (f"{cap} objects tracked at once, SAM 3's limit (max_num_objects): objects found after that "
                "were not tracked; split the prompts over several runs or raise the limit in the model config")

    def pixels(self, rgb: np.ndarray) -> torch.Tensor:
        """A decoded frame as the model reads it."""
        return preprocess(rgb, self._loaded.image_size, self._loaded.device)

    @torch.inference_mode()
    def step(self, frame_idx: int, pixels: torch.Tensor,
             features: FrameFeatures | None = None) -> list[Sam3VideoSegmentationOutput]:
        """One frame through the model (``features``: its vision features, computed ahead; None: the
        model computes them); returns the raw outputs whose hotstart window closed, oldest first.
        Touches nothing shared but the weights: steps of different trackers may run at once."""
        self.session.add_new_frame(pixels, frame_idx)
        if self.visual is not None and features is None:
            # The visual objects read the frame's features too: computed once, for both.
            with self._autocast():
                features = frame_features.compute(self._model, pixels[None])[0]
        if self.session.prompts:
            threshold = self.detection_threshold
            model = step_model(self._model,
                               None if threshold is None else detection_thresholds(self._model.config, threshold),
                               features, self.exemplars.get(frame_idx))
            with self._autocast():
                out = model(inference_session=self.session, frame_idx=frame_idx)
            del model  # with it, the frame's features (the session keeps the tracker's part until the next step)
        else:
            out = _no_text_output(frame_idx)
        if self.visual is not None:
            self._visual_found[frame_idx] = self.visual.step(frame_idx, features)
        del features
        # The model never reads a past frame's pixels again; keep the key (num_frames counts keys).
        self.session.processed_frames[frame_idx] = None
        self.session.hotstart_removed_obj_ids.update(out.removed_obj_ids)
        self.buffer.append(out)
        delay = self._loaded.hotstart_delay
        closed: list[Sam3VideoSegmentationOutput] = []
        while delay > 0 and len(self.buffer) >= delay:
            closed.append(self.buffer.pop(0))
        if delay <= 0:
            closed.extend(self.buffer)
            self.buffer.clear()
        return closed

    @torch.inference_mode()
    def final_objects(self, closed: list[Sam3VideoSegmentationOutput]) -> list[FrameObjects]:
        """Final objects of frames whose window closed (``step``'s outputs)."""
        return [self._with_visual(postprocess(self.session, out, self.height, self.width)) for out in closed]

    def _with_visual(self, found: FrameObjects) -> FrameObjects:
        if self.visual is None and not self.backward:
            return found
        others = [f for f in (self._visual_found.pop(found.frame_idx, None), self.backward.pop(found.frame_idx, None))
                  if f is not None]
        return merge(found, *others) if others else found

    def push(self, frame_idx: int, rgb: np.ndarray) -> list[FrameObjects]:
        """``step`` and ``final_objects`` for one decoded frame, its features computed by the model."""
        return self.final_objects(self.step(frame_idx, self.pixels(rgb)))

    @torch.inference_mode()
    def flush(self) -> list[FrameObjects]:
        """End of the video: every buffered frame is final."""
        closed, self.buffer = self.buffer, []
        return self.final_objects(closed)


def _no_text_output(frame_idx: int) -> Sam3VideoSegmentationOutput:
    """A frame's output with no text prompt: no text-found objects."""
    return Sam3VideoSegmentationOutput(object_ids=[], obj_id_to_mask={}, obj_id_to_score={},
                                       obj_id_to_tracker_score={}, removed_obj_ids=set(), suppressed_obj_ids=set(),
                                       frame_idx=frame_idx)


def postprocess(session: Sam3VideoInferenceSession, out: Sam3VideoSegmentationOutput,
                height: int, width: int) -> FrameObjects:
    """Sam3VideoProcessor.postprocess_outputs, minus torchvision's boxes (RLE gives them later).

    Objects whose mask is empty, before or after the non-overlap constraint, are dropped: an entry
    with no pixels tells a user nothing. Everything stays on the model's device until one transfer
    brings back the masks and what is needed to pick the objects (one host sync a frame, where the
    per-object filtering of transformers' processor waits on the device several times).
    """
    obj_ids = sorted(out.obj_id_to_mask.keys())
    hidden = set(out.suppressed_obj_ids or ()) | set(session.hotstart_removed_obj_ids)
    obj_ids = [i for i in obj_ids if i not in hidden]
    if not obj_ids:
        return FrameObjects(out.frame_idx, [], [], [], np.zeros((0, height, width), dtype=bool))
    low_res = torch.cat([out.obj_id_to_mask[i] for i in obj_ids], dim=0).float()
    logits = F.interpolate(low_res.unsqueeze(1), size=(height, width), mode="bilinear", align_corners=False)
    masks = logits.squeeze(1) > 0
    empty = ~masks.flatten(1).any(dim=1)
    prompt_ids = [session.obj_id_to_prompt_id[i] for i in obj_ids]
    tracker_scores = [float(out.obj_id_to_tracker_score.get(i, 0.0)) for i in obj_ids]
    masks = exclusive_masks(masks, empty, tracker_scores, prompt_ids)
    keep = masks.flatten(1).any(dim=1)
    masks_host, keep_host = masks.to("cpu", non_blocking=True), keep.to("cpu", non_blocking=True)
    if masks.device.type == "cuda":
        torch.cuda.current_stream(masks.device).synchronize()
    keep_list = keep_host.tolist()
    kept = [i for i, k in enumerate(keep_list) if k]
    return FrameObjects(
        out.frame_idx,
        [obj_ids[i] for i in kept],
        [min(1.0, max(0.0, float(out.obj_id_to_score[obj_ids[i]]))) for i in kept],
        [session.prompts[prompt_ids[i]] for i in kept],
        masks_host.numpy()[kept] if len(kept) < len(obj_ids) else masks_host.numpy(),
    )


def exclusive_masks(masks: torch.Tensor, empty: torch.Tensor, scores: list[float],
                    prompt_ids: list[int]) -> torch.Tensor:
    """transformers' object-wise non-overlap constraint, exactly, on the device and without a host sync.

    What the processor does, applied (as there) only when more than one object has pixels: within
    each prompt, a pixel stays with the object of the highest tracker score (ties to the lower id),
    and only if that score is above 0. The processor leaves empty masks out first; here they stay in
    the stack but can never win a pixel (-1, below every score and below background 0), so every
    other object gets exactly the pixels it would get without them.
    """
    if len(prompt_ids) < 2:
        return masks
    score = torch.tensor(scores, dtype=torch.float32).to(masks.device, non_blocking=True)
    values = torch.where(masks, score[:, None, None], torch.where(empty, -1.0, 0.0)[:, None, None])
    constrained = masks & (score > 0)[:, None, None]
    for prompt in dict.fromkeys(prompt_ids):
        rows = [i for i, p in enumerate(prompt_ids) if p == prompt]
        if len(rows) < 2:
            continue
        index = torch.tensor(rows).to(masks.device, non_blocking=True)
        winner = torch.argmax(values.index_select(0, index), dim=0, keepdim=True)
        own = torch.arange(len(rows), device=masks.device)[:, None, None]
        constrained[index] = constrained.index_select(0, index) & (winner == own)
    return torch.where((~empty).sum() > 1, constrained, masks)
