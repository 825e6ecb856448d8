"""Which parts of transformers 5.24's SAM 3 video session the tracker state carries, and how.

This is the half of the state codec that changes with every transformers upgrade: the attributes
of ``Sam3VideoInferenceSession`` and its cache, the model-output classes a state may hold, and the
check that a live session still has exactly this layout. An attribute this module does not know (an
upgrade that adds state) fails the capture loudly instead of being silently dropped. The encoding
itself (``workers.model.tagged_codec``) does not change with transformers.
"""

from __future__ import annotations

import transformers
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.clip.modeling_clip import CLIPTextModelOutput
from transformers.models.sam3_video.modeling_sam3_video import (
    Sam3VideoInferenceCache,
    Sam3VideoInferenceSession,
    Sam3VideoSegmentationOutput,
)
from transformers.utils import ModelOutput

from workers.model.tagged_codec import StateError
from workers.model.tracker import VideoTracker

# Every attribute of Sam3VideoInferenceSession in transformers 5.24, and how it is carried.
# "value": encoded as-is (tagged JSON, tensors in safetensors).
CARRIED = "value"
SESSION_ATTRIBUTES: dict[str, str] = {
    # Keys only: num_frames is len(processed_frames) (it sets the object-pointer window), but a
    # processed frame's pixels are never read again (VideoTracker sets them to None already).
    "processed_frames": "frame keys",
    "video_height": CARRIED,
    "video_width": CARRIED,
    # Devices are chosen by the process that restores (its model device, its state device).
    "inference_device": "restore-time device",
    "inference_state_device": "restore-time device",
    "video_storage_device": "restore-time device",
    "dtype": "dtype name",
    "max_vision_features_cache_size": CARRIED,
    # Holds the vision features of the last processed frame only; the next frame computes and
    # caches its own before anything reads the cache, so a restored session starts it empty.
    "cache": "dropped",
    "_obj_id_to_idx": CARRIED,
    "_obj_idx_to_id": CARRIED,
    "obj_ids": CARRIED,
    "mask_inputs_per_obj": CARRIED,
    "point_inputs_per_obj": CARRIED,
    "output_dict_per_obj": CARRIED,
    "frames_tracked_per_obj": CARRIED,
    "prompts": CARRIED,
    "prompt_input_ids": CARRIED,
    "prompt_embeddings": CARRIED,  # cached text-encoder outputs (ModelOutput, allow-listed below)
    "prompt_attention_masks": CARRIED,
    "obj_id_to_prompt_id": CARRIED,
    "obj_id_to_score": CARRIED,
    "obj_id_to_tracker_score_frame_wise": CARRIED,
    "obj_id_to_last_occluded": CARRIED,
    "max_obj_id": CARRIED,
    "obj_first_frame_idx": CARRIED,
    "unmatched_frame_inds": CARRIED,
    "overlap_pair_to_frame_inds": CARRIED,  # tuple keys
    "trk_keep_alive": CARRIED,
    "removed_obj_ids": CARRIED,
    "suppressed_obj_ids": CARRIED,
    "hotstart_removed_obj_ids": CARRIED,
    # Never read by Sam3VideoModel.forward (VideoTracker keeps its own buffer): must be empty.
    "output_buffer": "must be empty",
    # Set by Sam3VideoModel._tracker_add_new_objects, so absent until the first object appears.
    "obj_with_new_inputs": CARRIED,
}
OPTIONAL_SESSION_ATTRIBUTES = {"obj_with_new_inputs"}
CACHE_ATTRIBUTES = {"inference_device", "inference_state_device", "max_vision_features_cache_size", "_vision_features"}

# VideoTracker's attributes: the model comes from the restoring process, the rest is carried.
TRACKER_ATTRIBUTES = {"_loaded", "_model", "height", "width", "detection_threshold", "session", "buffer",
                      # Visual prompts (#22): carried in the state's "visual" section (state_codec);
                      # exemplars are inputs the chunk runner gives a restored tracker again.
                      "visual", "backward", "_visual_found", "exemplars"}

# The only classes a state may instantiate (by name, never by import path).
MODEL_OUTPUTS: dict[str, type[ModelOutput]] = {
    cls.__name__: cls for cls in (Sam3VideoSegmentationOutput, CLIPTextModelOutput, BaseModelOutputWithPooling)
}
# Per-frame tracker outputs that store_output moves to the inference-state device; everything else
# (object pointers, score logits, memory features written later) lives on the inference device.
STATE_DEVICE_KEYS = {"pred_masks", "high_res_masks"}


def tensor_role(name: str) -> str:
    if name.startswith("session/output_dict_per_obj/") and name.rsplit("/", 1)[-1] in STATE_DEVICE_KEYS:
        return "state"
    return "inference"



def check_layout(tracker: VideoTracker, session: Sam3VideoInferenceSession) -> None:
    unknown = sorted(set(vars(tracker)) - TRACKER_ATTRIBUTES)
    if unknown:
        raise StateError(
            f"cannot capture the tracker: VideoTracker has attribute(s) {unknown} that the state codec "
            f"does not carry; add them to workers/model/state_codec.py"
        )
    if type(session) is not Sam3VideoInferenceSession:
        raise StateError(f"cannot capture the tracker: its session is a {type(session).__qualname__}")
    present = set(vars(session))
    unknown = sorted(present - set(SESSION_ATTRIBUTES))
    missing = sorted(set(SESSION_ATTRIBUTES) - OPTIONAL_SESSION_ATTRIBUTES - present)
    if unknown or missing:
        raise StateError(
            "session layout the pinned transformers version does not have: Sam3VideoInferenceSession "
            f"(transformers {transformers.__version__}) has unknown attribute(s) {unknown} and lacks "
            f"{missing}; workers/model/state_codec.py was written for transformers 5.24: review what the "
            "new state holds before upgrading"
        )
    cache = session.cache
    if type(cache) is not Sam3VideoInferenceCache or set(vars(cache)) != CACHE_ATTRIBUTES:
        raise StateError(
            "session layout the pinned transformers version does not have: the session cache "
            f"({type(cache).__qualname__}) has attributes {sorted(vars(cache))}, expected {sorted(CACHE_ATTRIBUTES)}"
        )


def frame_ranges(keys) -> list[list[int]]:
    """processed_frames' keys in insertion order as half-open runs [start, stop)."""
    runs: list[list[int]] = []
    for k in keys:
        if type(k) is not int:
            raise StateError(f"cannot capture the tracker: processed_frames has a key of type {type(k).__qualname__}")
        if runs and runs[-1][1] == k:
            runs[-1][1] = k + 1
        else:
            runs.append([k, k + 1])
    return runs
