"""Visual objects through SAM 3's interactive tracker, in one direction, on the one loaded model.

``Sam3VideoModel`` holds SAM 3's tracker (``tracker_model``, a ``Sam3TrackerVideoModel`` without a
vision encoder of its own) and feeds it the detector backbone's features through
``tracker_neck``. A ``VisualSession`` drives that same tracker for the objects a caller gave as
points, a box or a mask (``workers.model.visual_objects``), with the frame's features the text path
computed (``FrameFeatures``): no second model, no second backbone call.

What transformers' ``Sam3TrackerVideoProcessor.add_inputs_to_inference_session`` plus
``Sam3TrackerVideoModel.forward`` do for a click, done here for frames that arrive in order:

- On a frame where an object is prompted, the object is conditioned on its prompt: points and the
  box (as the corner points labelled 2 and 3, first) scaled from the displayed frame to the model's
  square input, or the mask resized to it, go through ``_run_single_frame_inference`` as an initial
  conditioning frame, and its memory is encoded at once. A prompt on a later frame of the same
  object adds a conditioning frame (the tracker attends to up to ``max_cond_frame_num`` of them).
- Every frame then runs the tracker's forward for all objects in the session (conditioning outputs
  of this frame are reused, as transformers does), with its memory encoder.

Conditioning is done object by object before the forward rather than through the forward's
new-input path, for two reasons read in transformers 5.24: the forward switches ``reverse`` off for
every object after one with a new input on the frame (so a backward pass would track the others
forwards on that frame), and it encodes the memories of a frame's objects as one batch whose masks
are binarised if any one of them came from a prompt.

A session tracks forwards (frames in increasing order) or backwards (decreasing): the backward pass
of a video is its own session, run before the forward one (``workers.chunks.backward_pass``). Only
objects present in the session are tracked; an object joins at its first prompt in the session's
direction. The session's frame keys (``num_frames``, which sets the object-pointer window) are the
frames the run covers (``frames``), as when transformers' interactive tracker holds the whole video;
without them, the frames pushed so far.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F
from transformers.models.sam3_video import modeling_sam3_video
from transformers.models.sam3_video.modeling_sam3_video import Sam3VideoInferenceSession

from workers.media.frame_objects import FrameObjects
from workers.model.frame_features import FrameFeatures
from workers.model.loading import LoadedModel
from workers.model.visual_objects import FramePrompt, VisualObject


class VisualSession:
    """The visual objects of one video through SAM 3's tracker, frames pushed in one direction."""

    def __init__(self, loaded: LoadedModel, objects: list[VisualObject], height: int, width: int,
                 reverse: bool = False, frames: range | None = None,
                 state_device: str | torch.device | None = None):
        self._loaded = loaded
        self._tracker = loaded.model.tracker_model
        self.objects = {o.obj_id: o for o in objects}
        self.height, self.width, self.reverse = height, width, reverse
        device = loaded.device
        # The tracker reads only what Sam3VideoModel's own session gives it: the same class, so the
        # state codec and the pruning know it.
        self.session = Sam3VideoInferenceSession(video_height=height, video_width=width, inference_device=device,
                                                 inference_state_device=state_device or device,
                                                 video_storage_device=device, dtype=torch.float32)
        self.session.obj_with_new_inputs = []
        # Keys only (num_frames is their count); pixels are never stored: features come cached.
        self.session.processed_frames = dict.fromkeys(frames or (), None)
        self.last: int | None = None

    @torch.inference_mode()
    def step(self, frame_idx: int, features: FrameFeatures) -> FrameObjects:
        """Track the session's objects on ``frame_idx`` (the next frame in its direction)."""
        if self.last is not None and (frame_idx <= self.last if not self.reverse else frame_idx >= self.last):
            raise ValueError(f"frame {frame_idx} after {self.last}: a {'backward' if self.reverse else 'forward'} "
                             "session takes frames in order")
        self.last = frame_idx
        session = self.session
        session.processed_frames.setdefault(frame_idx, None)
        session.cache.cache_vision_features(frame_idx, {"vision_feats": features.tracker_feats,
                                                        "vision_pos_embeds": features.tracker_pos})
        with self._autocast():
            for obj in self.objects.values():
                prompt = obj.on(frame_idx)
                if prompt is not None:
                    self._condition(obj.obj_id, prompt)
            if not session.obj_ids:
                return FrameObjects(frame_idx, [], [], [], np.zeros((0, self.height, self.width), dtype=bool))
            out = self._tracker(inference_session=session, frame_idx=frame_idx, reverse=self.reverse,
                                run_mem_encoder=True)
        session.cache.clear_all()  # the frame's features go with the frame
        return self._frame_objects(frame_idx, list(out.object_ids), out.pred_masks, out.object_score_logits)

    def _autocast(self):
        dtype = self._loaded.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self._loaded.device.type, dtype=dtype)

    def _condition(self, obj_id: int, prompt: FramePrompt) -> None:
        """``obj_id``'s prompt on this frame as an initial conditioning frame, its memory encoded."""
        session, tracker = self.session, self._tracker
        obj_idx = session.obj_id_to_idx(obj_id)
        point_inputs, mask_inputs, mask_logits = self._inputs(prompt)
        out = tracker._run_single_frame_inference(
            inference_session=session, frame_idx=prompt.frame, obj_idx=obj_idx, batch_size=1,
            is_init_cond_frame=True, point_inputs=point_inputs, mask_inputs=mask_inputs, reverse=False,
            prev_sam_mask_logits=mask_logits, streaming=False)
        session.store_output(obj_idx, prompt.frame, output_value=out, is_conditioning_frame=True)
        tracker._batch_encode_memories(
            inference_session=session, frame_idx=prompt.frame, objects_needing_memory_encoding=[obj_idx],
            high_res_masks_for_memory=[out["high_res_masks"]],
            object_score_logits_for_memory=[out["object_score_logits"]], is_mask_from_pts_per_obj=[True])

    def _inputs(self, prompt: FramePrompt) -> tuple[dict | None, torch.Tensor | None, torch.Tensor | None]:
        """(point inputs, mask input, mask logits beside points) as ``Sam3TrackerVideoProcessor`` and
        the tracker take them: coordinates scaled from the displayed frame to the model's square input;
        a box as two corner points labelled 2 and 3, before the clicks; a mask alone resized to the
        input (bilinear, antialiased, >= 0.5) and used as the object's mask (``_use_mask_as_output``);
        a mask with points or a box goes to SAM's mask decoder as its dense prompt, as logits (+-10,
        as transformers turns an input mask into logits) at the prompt encoder's mask size."""
        size = self._loaded.image_size
        device = self._loaded.device
        mask = None
        if prompt.mask is not None:
            mask = torch.from_numpy(prompt.mask).to(device).float()[None, None]
            mask = F.interpolate(mask, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            mask = (mask >= 0.5).float()
            if not prompt.points and prompt.box is None:
                return None, mask, None
            small = F.interpolate(mask, size=self._tracker.prompt_encoder.mask_input_size, mode="bilinear",
                                  align_corners=False, antialias=True)
            mask = (small >= 0.5).float() * 20.0 - 10.0
        coords: list[tuple[float, float]] = []
        labels: list[int] = []
        if prompt.box is not None:
            x0, y0, x1, y1 = prompt.box
            coords += [(x0, y0), (x1, y1)]
            labels += [2, 3]
        coords += list(prompt.points)
        labels += list(prompt.labels)
        scale = torch.tensor([size / self.width, size / self.height], dtype=torch.float32)
        points = (torch.tensor(coords, dtype=torch.float32) * scale).to(device)
        labels_t = torch.tensor(labels, dtype=torch.int32, device=device)
        return {"point_coords": points[None, None], "point_labels": labels_t[None, None]}, None, mask

    def _frame_objects(self, frame_idx: int, obj_ids: list[int], low_res: torch.Tensor,
                       score_logits: torch.Tensor) -> FrameObjects:
        """As Sam3VideoModel outputs a tracked object: holes filled and specks removed on the low-res
        logits, then resized to the frame (> 0); the score is the tracker's object score."""
        model = self._loaded.model
        low_res = low_res.float().reshape(len(obj_ids), 1, *low_res.shape[-2:])
        low_res = modeling_sam3_video.fill_holes_in_mask_scores(low_res, max_area=model.fill_hole_area,
                                                                fill_holes=True, remove_sprinkles=True)
        masks = F.interpolate(low_res, size=(self.height, self.width), mode="bilinear", align_corners=False)[:, 0] > 0
        scores = torch.sigmoid(score_logits.float().reshape(-1))
        masks_host, scores_host = masks.cpu().numpy(), scores.cpu().tolist()
        keep = [i for i in range(len(obj_ids)) if masks_host[i].any()]
        return FrameObjects(frame_idx, [obj_ids[i] for i in keep], [scores_host[i] for i in keep],
                            [self.objects[obj_ids[i]].description for i in keep], masks_host[keep])


def merge(*found: FrameObjects) -> FrameObjects:
    """One frame's objects from several sources (text, visual forwards, visual backwards), by id."""
    first = found[0]
    rows = sorted(((obj_id, score, prompt, mask) for f in found
                   for obj_id, score, prompt, mask in zip(f.object_ids, f.scores, f.prompts, f.masks)),
                  key=lambda row: row[0])
    if not rows:
        return first
    if len({r[0] for r in rows}) != len(rows):
        raise RuntimeError(f"internal: frame {first.frame_idx} has an object id twice")
    return FrameObjects(first.frame_idx, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                        np.stack([r[3] for r in rows]))
