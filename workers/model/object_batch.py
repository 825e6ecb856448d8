"""Object-batched tracking: the tracker's per-frame step for many objects in one pass.

transformers' ``Sam3TrackerVideoModel.forward`` (5.24) runs memory attention and the mask decoder
one object at a time (``for obj_idx in range(num_objects)``, ``batch_size=1``): about 2,000 aten
operations, each at least one kernel launch on a GPU, per object per frame. Meta's SAM 3 batches
the objects that first appeared on the same frame together (they share their memory layout).

Here objects with no new input on a frame are grouped by their memory *layout*: the number of
memory frames and the number of object-pointer tokens they attend to. Within a group every
object's memory and pointers are stacked along the batch dimension and go through memory
attention and the mask decoder as one batch; the temporal positions (which memory frame, how far
back each pointer is) are applied per row, so objects whose conditioning frames differ (different
first frames, reconditioning) still share a group. Each row computes exactly what the per-object
loop computes for that object; only the matrix shapes differ, which on some devices can change
the last bits of a float.

Everything else stays transformers' own: objects with new inputs (a new object's mask, points)
take the per-object path, conditioning outputs are reused as there, the outputs are stored per
object (so reconditioning, removal, hotstart, the state codec and pruning see what they always
saw), and the memory encoder runs once for all objects as transformers already batches it.

``install(model, enabled)`` puts the batched step on a model's tracker (idempotent; ``enabled``
switches between it and transformers' loop, e.g. for ``--no-object-batch`` or the baseline of a
benchmark). A step streaming its own frame (``frame=...``), which SAM 3's video model never does,
goes to transformers' loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
    NO_OBJ_SCORE,
    Sam3TrackerVideoSegmentationOutput,
    get_1d_sine_pe,
)

_ATTRIBUTE = "_sam3v_object_batch"


@dataclass
class _Switch:
    """What ``install`` leaves on a tracker: transformers' forward and whether to batch."""

    original: object
    enabled: bool


def install(model, enabled: bool = True) -> None:
    """Give ``model``'s tracker (a Sam3VideoModel's ``tracker_model``, or a tracker itself) the
    object-batched step, or switch it on or off when it has it already."""
    tracker = getattr(model, "tracker_model", model)
    switch = getattr(tracker, _ATTRIBUTE, None)
    if switch is None:
        switch = _Switch(tracker.forward, enabled)
        setattr(tracker, _ATTRIBUTE, switch)
        # nn.Module.__call__ looks up ``forward`` on the instance first: only this model changes.
        tracker.forward = lambda *args, **kwargs: _forward(tracker, switch, *args, **kwargs)
    switch.enabled = enabled


def enabled(model) -> bool:
    switch = getattr(getattr(model, "tracker_model", model), _ATTRIBUTE, None)
    return bool(switch and switch.enabled)


def _forward(tracker, switch: _Switch, inference_session, frame_idx: int | None = None,
             frame: torch.Tensor | None = None, reverse: bool = False, run_mem_encoder: bool = True, **kwargs):
    if not switch.enabled or frame is not None or kwargs or frame_idx is None:
        return switch.original(inference_session=inference_session, frame_idx=frame_idx, frame=frame,
                               reverse=reverse, run_mem_encoder=run_mem_encoder, **kwargs)
    return batched_forward(tracker, inference_session, frame_idx, reverse, run_mem_encoder)


# --- one object's memory, as transformers reads it ----------------------------------------------

@dataclass
class _Memory:
    """What one object attends to on this frame: memory frames and object pointers, each with the
    temporal offset transformers gives it."""

    obj_idx: int
    frames: list[tuple[int, dict]]  # (relative temporal offset, that frame's stored output)
    pointer_offsets: list[int]
    pointers: list[torch.Tensor]

    @property
    def layout(self) -> tuple[int, int]:
        return len(self.frames), len(self.pointers)


def _memory_of(tracker, session, obj_idx: int, frame_idx: int, reverse: bool, max_pointers: int) -> _Memory:
    """``_gather_memory_frame_outputs`` and ``_get_object_pointers`` for one object, without moving
    a tensor (the group's stacks move once)."""
    frames = [(offset, out) for offset, out in
              tracker._gather_memory_frame_outputs(session, obj_idx, frame_idx, reverse) if out is not None]
    outputs = session.output_dict_per_obj[obj_idx]
    sign = -1 if reverse else 1
    offsets, pointers = [], []
    for t, out in outputs["cond_frame_outputs"].items():
        if (t >= frame_idx) if reverse else (t <= frame_idx):  # eval: past conditioning frames only
            offsets.append((frame_idx - t) * sign)
            pointers.append(out["object_pointer"])
    non_cond = outputs["non_cond_frame_outputs"]
    num_frames = session.num_frames
    for t_diff in range(1, max_pointers):
        t = frame_idx + t_diff if reverse else frame_idx - t_diff
        if t < 0 or (num_frames is not None and t >= num_frames):
            break  # transformers' non-streaming bound (SAM 3's video model never streams frames)
        out = non_cond.get(t)
        if out is not None:
            offsets.append(t_diff)
            pointers.append(out["object_pointer"])
    return _Memory(obj_idx, frames, offsets, pointers)


@dataclass
class _Group:
    members: list[_Memory] = field(default_factory=list)


# --- the batched step ---------------------------------------------------------------------------

def batched_forward(tracker, session, frame_idx: int, reverse: bool, run_mem_encoder: bool):
    """``Sam3TrackerVideoModel.forward`` for a frame already in the session, objects batched."""
    num_objects = session.get_obj_num()
    pred_masks: list[torch.Tensor | None] = [None] * num_objects
    scores: list[torch.Tensor | None] = [None] * num_objects
    computed: dict[int, tuple[dict, bool]] = {}  # obj_idx -> (output, its mask came from an input)
    groups: dict[tuple[int, int], _Group] = {}
    max_pointers = (tracker.config.max_object_pointers_in_encoder if session.num_frames is None
                    else min(session.num_frames, tracker.config.max_object_pointers_in_encoder))

    for obj_idx in range(num_objects):
        obj_id = session.obj_idx_to_id(obj_idx)
        has_new_inputs = obj_id in session.obj_with_new_inputs
        outputs = session.output_dict_per_obj[obj_idx]
        if not has_new_inputs and frame_idx in outputs["cond_frame_outputs"]:
            # As transformers: a conditioning output of this frame is reused, not recomputed.
            pred_masks[obj_idx] = session.get_output(obj_idx, frame_idx, "pred_masks", is_conditioning_frame=True)
            scores[obj_idx] = session.get_output(obj_idx, frame_idx, "object_score_logits",
                                                 is_conditioning_frame=True).squeeze(-1)
            continue
        is_init_cond_frame, point_inputs, mask_inputs = False, None, None
        if has_new_inputs:
            is_init_cond_frame = frame_idx not in session.frames_tracked_per_obj[obj_idx]
            if is_init_cond_frame:
                reverse = False  # as transformers: for this object and every later one
            point_inputs = session.point_inputs_per_obj[obj_idx].get(frame_idx, None)
            mask_inputs = session.mask_inputs_per_obj[obj_idx].get(frame_idx, None)
            if point_inputs is not None or mask_inputs is not None:
                session.obj_with_new_inputs.remove(obj_id)
        if is_init_cond_frame or point_inputs is not None or mask_inputs is not None:
            # A new object or new prompts: transformers' own per-object step.
            out = tracker._run_single_frame_inference(
                inference_session=session, obj_idx=obj_idx, frame_idx=frame_idx, batch_size=1,
                is_init_cond_frame=is_init_cond_frame, point_inputs=point_inputs, mask_inputs=mask_inputs,
                reverse=reverse, streaming=False)
            computed[obj_idx] = (out, point_inputs is not None or mask_inputs is not None)
            session.store_output(obj_idx, frame_idx, output_value=out, is_conditioning_frame=is_init_cond_frame)
            if not is_init_cond_frame:
                session.frames_tracked_per_obj[obj_idx][frame_idx] = {"reverse": reverse}
            continue
        memory = _memory_of(tracker, session, obj_idx, frame_idx, reverse, max_pointers)
        groups.setdefault(memory.layout, _Group()).members.append(memory)
        session.frames_tracked_per_obj[obj_idx][frame_idx] = {"reverse": reverse}

    for group in groups.values():
        outs = _track_group(tracker, session, frame_idx, group.members, max_pointers)
        for memory, out in zip(group.members, outs):
            computed[memory.obj_idx] = (out, False)
            session.store_output(memory.obj_idx, frame_idx, output_value=out, is_conditioning_frame=False)

    order = sorted(computed)  # transformers' order: by object index
    for obj_idx in order:
        out = computed[obj_idx][0]
        pred_masks[obj_idx] = out["pred_masks"]
        scores[obj_idx] = out["object_score_logits"].squeeze(-1)
    if run_mem_encoder and tracker.num_maskmem > 0:
        tracker._batch_encode_memories(
            inference_session=session, frame_idx=frame_idx, objects_needing_memory_encoding=order,
            high_res_masks_for_memory=[computed[i][0]["high_res_masks"] for i in order],
            object_score_logits_for_memory=[computed[i][0]["object_score_logits"] for i in order],
            is_mask_from_pts_per_obj=[computed[i][1] for i in order],
        )
    return Sam3TrackerVideoSegmentationOutput(
        object_ids=session.obj_ids.copy(),
        pred_masks=torch.cat(pred_masks, dim=0) if num_objects > 1 else pred_masks[0],
        object_score_logits=torch.cat(scores, dim=0) if num_objects > 1 else scores[0],
        frame_idx=frame_idx,
    )


def _track_group(tracker, session, frame_idx: int, members: list[_Memory], max_pointers: int) -> list[dict]:
    """``_run_single_frame_inference`` (no inputs, not an initial conditioning frame) for objects of
    one memory layout, as one batch; returns each object's output, as transformers stores it."""
    batch = len(members)
    device = session.inference_device
    feats, pos = tracker._prepare_vision_features(session, frame_idx, batch_size=1)
    # (HW, 1, C) per level -> the batch, without copying.
    feats = [f.expand(-1, batch, -1) for f in feats]
    high_res = [x.permute(1, 2, 0).view(batch, x.size(2), *s)
                for x, s in zip(feats[:-1], tracker.backbone_feature_sizes[:-1])]
    pix_feat = _memory_conditioned(tracker, session, feats[-1], pos[-1].expand(-1, batch, -1), members,
                                   max_pointers, device)
    outs = _decode(tracker, pix_feat, high_res, tracker._use_multimask(False, None))
    return [{key: value[i:i + 1] for key, value in outs.items()} for i in range(batch)]


def _stack_frames(members: list[_Memory], key: str, device) -> torch.Tensor:
    """Memory frame j of every object, stacked: (S, HW, B, C) from S x B tensors of (HW, 1, C)."""
    flat = [m.frames[j][1][key] for j in range(len(members[0].frames)) for m in members]
    stacked = torch.cat(flat, dim=1).to(device, non_blocking=True)  # (HW, S*B, C)
    hw, _, channels = stacked.shape
    return stacked.view(hw, len(members[0].frames), len(members), channels).permute(1, 0, 2, 3)


def _memory_conditioned(tracker, session, current: torch.Tensor, current_pos: torch.Tensor,
                        members: list[_Memory], max_pointers: int, device) -> torch.Tensor:
    """``_prepare_memory_conditioned_features`` for a batch of objects of one layout."""
    batch = len(members)
    channels = tracker.hidden_dim
    height, width = tracker.backbone_feature_sizes[-1]
    num_frames, num_pointers = members[0].layout
    memories, memory_pos = [], []
    if num_frames:
        features = _stack_frames(members, "maskmem_features", device)
        spatial = _stack_frames(members, "maskmem_pos_enc", device)
        # Each row's own temporal encoding (an offset of 0, a conditioning frame, reads the last).
        slots = [[(m.frames[j][0] - 1) % tracker.num_maskmem for m in members] for j in range(num_frames)]
        temporal = tracker.memory_temporal_positional_encoding.view(tracker.num_maskmem, -1)[
            torch.tensor(slots, device=device)]  # (S, B, C)
        memories.append(features.reshape(-1, batch, features.shape[-1]))
        memory_pos.append((spatial + temporal.unsqueeze(1)).reshape(-1, batch, spatial.shape[-1]))
    num_pointer_tokens = 0
    if num_pointers:
        pointers, pointers_pos = _object_pointers(tracker, members, max_pointers, channels, device)
        memories.append(pointers)
        memory_pos.append(pointers_pos)
        num_pointer_tokens = pointers.shape[0]
    memory = torch.cat(memories, dim=0).to(dtype=session.dtype)
    conditioned = tracker.memory_attention(
        current_vision_features=current,
        current_vision_position_embeddings=current_pos,
        memory=memory,
        memory_posision_embeddings=torch.cat(memory_pos, dim=0),
        num_object_pointer_tokens=num_pointer_tokens,
    )
    # (1, B, HW, C) -> (B, C, H, W)
    return conditioned[0].transpose(1, 2).view(batch, channels, height, width)


def _object_pointers(tracker, members: list[_Memory], max_pointers: int, channels: int,
                     device) -> tuple[torch.Tensor, torch.Tensor]:
    """``_process_object_pointers`` for a batch, each row with its own temporal offsets."""
    batch = len(members)
    num_pointers = len(members[0].pointers)
    flat = [m.pointers[p].reshape(1, -1) for p in range(num_pointers) for m in members]
    pointers = torch.cat(flat, dim=0).to(device, non_blocking=True).view(num_pointers, batch, -1)
    mem_dim = tracker.mem_dim
    if tracker.config.enable_temporal_pos_encoding_for_object_pointers:
        offsets = torch.tensor([[m.pointer_offsets[p] for m in members] for p in range(num_pointers)],
                               device=device, dtype=torch.float32) / float(max_pointers - 1)
        sine = get_1d_sine_pe(offsets, dim=channels).to(pointers.dtype)
        pointers_pos = tracker.temporal_positional_encoding_projection_layer(sine)  # (P, B, mem_dim)
    else:
        pointers_pos = pointers.new_zeros(num_pointers, batch, mem_dim)
    if mem_dim < channels:
        splits = channels // mem_dim
        pointers = pointers.reshape(-1, batch, splits, mem_dim).permute(0, 2, 1, 3).flatten(0, 1)
        pointers_pos = pointers_pos.repeat_interleave(splits, dim=0)
    return pointers, pointers_pos


def _decode(tracker, pix_feat: torch.Tensor, high_res: list[torch.Tensor], multimask: bool) -> dict:
    """``_single_frame_forward`` without prompts, for a batch: transformers' picks the best of the
    multimask outputs with an index that is right only for one object, so this picks per row."""
    batch = pix_feat.shape[0]
    device = pix_feat.device
    image_pe = tracker.get_image_wide_positional_embeddings().repeat(batch, 1, 1, 1)
    points = torch.zeros(batch, 1, 1, 2, dtype=pix_feat.dtype, device=device)
    labels = -torch.ones(batch, 1, 1, dtype=torch.int32, device=device)
    sparse, dense = tracker.prompt_encoder(input_points=points, input_labels=labels, input_boxes=None,
                                           input_masks=None)
    low_multi, iou, tokens, object_score_logits = tracker.mask_decoder(
        image_embeddings=pix_feat, image_positional_embeddings=image_pe, sparse_prompt_embeddings=sparse,
        dense_prompt_embeddings=dense, multimask_output=multimask, high_resolution_features=high_res,
    )
    appearing = object_score_logits > 0
    # The mask for spatial memory is a hard choice between object and no object.
    low_multi = torch.where(appearing[:, None, None], low_multi, NO_OBJ_SCORE)
    high_multi = F.interpolate(low_multi.squeeze(1).float(), size=(tracker.image_size, tracker.image_size),
                               mode="bilinear", align_corners=False).unsqueeze(1).to(low_multi.dtype)
    token = tokens[:, :, 0]
    if multimask:
        rows = torch.arange(batch, device=device)[:, None]  # (B, 1)
        best = torch.argmax(iou, dim=-1)  # (B, 1)
        low, high = low_multi[rows, 0, best], high_multi[rows, 0, best]  # (B, 1, H, W)
        if tokens.size(2) > 1:
            token = tokens[rows, 0, best]
    else:
        low, high = low_multi[:, :, 0], high_multi[:, :, 0]
    pointer = tracker.object_pointer_proj(token)
    weight = appearing.to(pointer.dtype)
    pointer = weight * pointer + (1 - weight) * tracker.no_object_pointer
    return {"pred_masks": low, "object_pointer": pointer, "high_res_masks": high,
            "object_score_logits": object_score_logits}
