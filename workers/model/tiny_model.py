"""A tiny, randomly initialised SAM 3 video model for tests, CI and the demo; also a full-size one
for GPU benchmarks.

Its masks are MEANINGLESS: it runs the real architecture (detector, tracker, memory, hotstart) at a
size that runs on two CPU cores. It is tuned only so that it produces objects: with plain random
weights the tracker's object-score head calls every object absent (masks filled with -1024) and every
output would be empty, which would make every downstream test vacuous.

``build_model("full")`` is transformers' default ``Sam3VideoConfig`` (~860 M parameters, 1008 px)
with the same tweaks, built in memory for ``benchmarks/bench_gpu.py``: its timings are SAM 3's, its
masks are as meaningless. It is never saved (3.4 GB of random numbers help nobody).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
from transformers import Sam3VideoConfig, Sam3VideoModel

from workers.model.tokenizer import build_clip_tokenizer

TINY_MARKER = "sam3v_tiny_model.json"
TINY_WARNING = "tiny random test model: its masks are meaningless (for tests, CI and demos only)"

_HIDDEN = 128
_IMAGE = 224
_PATCH = 14


def _vit(hidden: int) -> dict:
    return {
        "model_type": "sam3_vision_model",
        "fpn_hidden_size": hidden,
        "backbone_config": {
            "model_type": "sam3_vit_model",
            "hidden_size": hidden,
            "intermediate_size": 4 * hidden,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "image_size": _IMAGE,
            "patch_size": _PATCH,
            "window_size": 8,
            "global_attn_indexes": [1],
            "pretrain_image_size": _IMAGE,
        },
    }


def tiny_config() -> Sam3VideoConfig:
    h = _HIDDEN
    return Sam3VideoConfig(
        detector_config={
            "vision_config": _vit(h),
            "text_config": {
                "model_type": "clip_text_model",
                "vocab_size": 49408,
                "hidden_size": h,
                "intermediate_size": 4 * h,
                "projection_dim": h,
                "num_hidden_layers": 2,
                "num_attention_heads": 4,
                "max_position_embeddings": 32,
            },
            "geometry_encoder_config": {"hidden_size": h, "num_layers": 1, "num_attention_heads": 4, "intermediate_size": 2 * h},
            "detr_encoder_config": {"hidden_size": h, "num_layers": 1, "num_attention_heads": 4, "intermediate_size": 2 * h},
            "detr_decoder_config": {
                "hidden_size": h, "num_layers": 1, "num_queries": 20, "num_attention_heads": 4, "intermediate_size": 2 * h,
            },
            "mask_decoder_config": {"hidden_size": h, "num_attention_heads": 4},
        },
        tracker_config={
            "vision_config": _vit(h),
            "image_size": _IMAGE,
            "prompt_encoder_config": {"hidden_size": h, "image_size": _IMAGE, "patch_size": _PATCH},
            "mask_decoder_config": {"hidden_size": h, "mlp_dim": 2 * h, "num_attention_heads": 4, "iou_head_hidden_dim": h},
            "memory_attention_hidden_size": h,
            "memory_attention_num_layers": 1,
            "memory_attention_feed_forward_hidden_size": 2 * h,
            "memory_encoder_hidden_size": h,
            "memory_encoder_output_channels": 64,
            "memory_attention_rope_feat_sizes": [16, 16],
            "mask_downsampler_embed_dim": h,
            "memory_fuser_embed_dim": h,
            "memory_fuser_intermediate_dim": 2 * h,
        },
        low_res_mask_size=64,
        # Random detector scores sit near 0.25: thresholds at 0 let detections through at all.
        score_threshold_detection=0.0,
        new_det_thresh=0.0,
        # A new object would be added almost every frame; a cap keeps a few stable tracks.
        max_num_objects=4,
        # Random detection masks overlap every track. A strict det->track association keeps one
        # detection from "matching" (and so duplicating) every track, while a loose track->det
        # threshold keeps tracks from being removed as unmatched during hotstart.
        assoc_iou_thresh=0.95,
        trk_assoc_iou_thresh=0.01,
    )


def full_config() -> Sam3VideoConfig:
    """SAM 3's real size (transformers' defaults) with the tiny model's detection thresholds."""
    # Random detector scores sit near 0.25: thresholds at 0 let detections through at all (every
    # one of the 200 queries; benchmarks cap them per frame).
    return Sam3VideoConfig(score_threshold_detection=0.0, new_det_thresh=0.0)


_CONFIGS = {"tiny": tiny_config, "full": full_config}
SIZES = tuple(_CONFIGS)


def build_model(size: str = "tiny", seed: int = 0, device: str | torch.device | None = None) -> Sam3VideoModel:
    """A random SAM 3 video model of ``size`` ("tiny" or "full"). ``device``: where the weights
    are made (None: torch's default; "cuda" initialises the full model in seconds instead of minutes)."""
    if size not in _CONFIGS:
        raise ValueError(f"model size {size!r}: expected one of {', '.join(SIZES)}")
    torch.manual_seed(seed)
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = Sam3VideoModel(_CONFIGS[size]()).eval()
    with torch.no_grad():
        # Random weights put the object-score logit below 0, so the tracker calls every object
        # absent; +5 makes tracked objects present.
        model.tracker_model.mask_decoder.pred_obj_score_head.proj_out.bias.fill_(5.0)
    return model


def build_tiny_model(seed: int = 0) -> Sam3VideoModel:
    return build_model("tiny", seed)


def save_tiny_model(directory: str | Path, seed: int = 0) -> Path:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    build_tiny_model(seed).save_pretrained(out)
    build_clip_tokenizer().save_pretrained(out)
    (out / TINY_MARKER).write_text(json.dumps({"seed": seed, "warning": TINY_WARNING}, indent=2) + "\n")
    return out


def is_tiny_model_dir(directory: str | Path) -> bool:
    return (Path(directory) / TINY_MARKER).is_file()
