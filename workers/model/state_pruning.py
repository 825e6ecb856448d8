"""Pruning a VideoTracker's history: drop what SAM 3's tracker will never read again.

The tracker reads a bounded window of past frames (``MemoryWindows``), but the session keeps every
frame's outputs; pruning after each push keeps a long video's memory and its saved state small.
Exact: masks are bit-identical with and without it.

API::

    prune(tracker)                                # after a push: drop never-read history
"""

from __future__ import annotations

import dataclasses

import torch

from workers.model.tracker import VideoTracker


@dataclasses.dataclass(frozen=True)
class MemoryWindows:
    """How far back the tracker reads, for the frame after the last one pushed (forward tracking).

    Read in transformers 5.24 ``Sam3TrackerVideoModel``:
    - ``_gather_memory_frame_outputs``: memory features of the non-conditioning frames 1 ..
      ``num_maskmem - 1`` back (6), of up to ``max_cond_frame_num`` (4) conditioning frames closest
      to the current frame (forward: the most recent ones), and of an unselected conditioning frame
      only when it lies in that same 6-frame window.
    - ``_get_object_pointers``: object pointers of the non-conditioning frames 1 ..
      ``min(num_frames, max_object_pointers_in_encoder) - 1`` back (15), and of *every*
      conditioning frame at or before the current one.
    - Sam3VideoModel's hotstart removes an object only while it is younger than ``hotstart_delay``
      frames; its per-object frame lists are read only then.
    """

    maskmem_frames: int
    pointer_frames: int
    cond_frames: int
    hotstart_delay: int

    @classmethod
    def of(cls, model) -> MemoryWindows:
        tracker = model.tracker_model
        return cls(
            maskmem_frames=max(0, int(tracker.num_maskmem) - 1),
            pointer_frames=max(0, int(tracker.config.max_object_pointers_in_encoder) - 1),
            cond_frames=int(tracker.config.max_cond_frame_num),
            hotstart_delay=int(model.hotstart_delay),
        )


# Per-frame tracker outputs read only while that frame is being processed.
_CURRENT_FRAME_KEYS = ("pred_masks", "high_res_masks", "object_score_logits")
_MEMORY_KEYS = ("maskmem_features", "maskmem_pos_enc")
_POINTER_KEY = "object_pointer"


def prune(tracker: VideoTracker, frame_idx: int | None = None, windows: MemoryWindows | None = None) -> int:
    """Drop what the tracker will never read again, once ``frame_idx`` (default: the last frame
    pushed) has been pushed; the next push must be a later frame. Returns the tensor bytes freed.

    Exact: the outputs of later pushes are bit-identical with and without pruning.
    ``windows`` overrides the model's windows (for experiments showing they are tight).
    """
    session = tracker.session
    frames = session.processed_frames
    if not frames:
        return 0
    last = max(frames)
    if frame_idx is None:
        frame_idx = last
    if frame_idx > last:
        raise ValueError(f"prune(frame_idx={frame_idx}): the last frame pushed is {last}")
    w = windows or MemoryWindows.of(tracker._model)
    upcoming = frame_idx + 1
    freed = 0
    for outputs in session.output_dict_per_obj.values():
        freed += _prune_outputs(outputs, frame_idx, w)
    freed += _prune_past_frames(session, frame_idx)
    _clear_settled_hotstart_lists(session, upcoming - w.hotstart_delay)
    for t in frames:
        if t <= frame_idx:
            frames[t] = None
    if tracker.visual is not None:
        freed += _prune_visual(tracker.visual.session, frame_idx, w)
    return freed


def _prune_visual(session, frame_idx: int, w: MemoryWindows) -> int:
    """The forward visual session (``workers.model.visual_tracker``): the same tracker reading the same
    windows, its objects conditioned only on frames already pushed, so the same pruning is exact."""
    freed = sum(_prune_outputs(outputs, frame_idx, w) for outputs in session.output_dict_per_obj.values())
    return freed + _prune_past_frames(session, frame_idx)


def _nbytes(value) -> int:
    return value.numel() * value.element_size() if isinstance(value, torch.Tensor) else 0


def _drop(entry: dict, keys) -> int:
    return sum(_nbytes(entry.pop(key, None)) for key in keys)


def _prune_outputs(outputs: dict, frame_idx: int, w: MemoryWindows) -> int:
    """One object's per-frame outputs (``output_dict_per_obj``); returns the tensor bytes freed."""
    upcoming = frame_idx + 1
    memory_from = upcoming - w.maskmem_frames
    pointer_from = upcoming - w.pointer_frames
    freed = 0
    non_cond = outputs["non_cond_frame_outputs"]
    for t in [t for t in non_cond if t <= frame_idx]:
        entry = non_cond[t]
        if t < memory_from and t < pointer_from:
            freed += _drop(entry, list(entry))
            del non_cond[t]
            continue
        freed += _drop(entry, _CURRENT_FRAME_KEYS)
        if t < memory_from:
            freed += _drop(entry, _MEMORY_KEYS)
        if t < pointer_from:
            freed += _drop(entry, (_POINTER_KEY,))
    cond = outputs["cond_frame_outputs"]
    past = sorted(t for t in cond if t <= frame_idx)
    # Entries stay (their count drives the selection; every pointer is read); only the memory
    # features of conditioning frames that can never be selected again go.
    selectable = set(past) if w.cond_frames < 1 else set(past[-w.cond_frames:])
    for t in past:
        freed += _drop(cond[t], _CURRENT_FRAME_KEYS)
        if t not in selectable and t < memory_from:
            freed += _drop(cond[t], _MEMORY_KEYS)
    return freed


def _prune_past_frames(session, frame_idx: int) -> int:
    """Per-object inputs and per-frame bookkeeping of frames up to ``frame_idx``; returns bytes freed."""
    freed = 0
    for per_obj in (session.mask_inputs_per_obj, session.point_inputs_per_obj, session.frames_tracked_per_obj):
        for by_frame in per_obj.values():
            for t in [t for t in by_frame if t <= frame_idx]:
                freed += _nbytes(by_frame.pop(t))
    # Written for the current frame and read back only as that frame's output (which holds its
    # own reference): past frames are never read.
    for per_frame in (session.obj_id_to_tracker_score_frame_wise, session.suppressed_obj_ids):
        for t in [t for t in per_frame if t <= frame_idx]:
            del per_frame[t]
    return freed


def _clear_settled_hotstart_lists(session, settled_first_frame: int) -> None:
    # Hotstart reads an object's frame lists only while the object is younger than the delay (or
    # not at all once removed); keep the keys (unmatched objects are iterated for keep-alive).
    first = session.obj_first_frame_idx
    removed = session.removed_obj_ids

    def settled(obj_id) -> bool:
        return obj_id in removed or (obj_id in first and first[obj_id] <= settled_first_frame)

    for obj_id, inds in session.unmatched_frame_inds.items():
        if inds and settled(obj_id):
            inds.clear()
    for (_, obj_id), inds in session.overlap_pair_to_frame_inds.items():
        if inds and settled(obj_id):
            inds.clear()


def prune_backward(session, frame_idx: int, windows: MemoryWindows) -> int:
    """``prune`` for a session tracking backwards (``VisualSession(reverse=True)``), once ``frame_idx``
    has been pushed: the tracker reads the same windows mirrored in time (frames after the current
    one, the nearest conditioning frames at or after it), so the forward pruning runs on the
    session's frames mirrored (frame t as -t). Its objects are conditioned only on frames already
    pushed, as going forwards. Returns the tensor bytes freed."""
    freed = 0
    for outputs in session.output_dict_per_obj.values():
        mirrored = {key: {-t: entry for t, entry in by_frame.items()} for key, by_frame in outputs.items()}
        freed += _prune_outputs(mirrored, -frame_idx, windows)
        for key, by_frame in outputs.items():
            for t in [t for t in by_frame if -t not in mirrored[key]]:
                del by_frame[t]
    for per_obj in (session.mask_inputs_per_obj, session.point_inputs_per_obj, session.frames_tracked_per_obj):
        for by_frame in per_obj.values():
            for t in [t for t in by_frame if t >= frame_idx]:
                freed += _nbytes(by_frame.pop(t))
    return freed
