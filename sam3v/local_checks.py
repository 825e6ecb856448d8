"""What `sam3v segment` and `sam3v run` check before the model loads (17-23 s for real weights):
prompts (text and visual), the input file, the device and the model's source. None of it imports
torch (but for counting the frames of a video whose header does not say, when visual prompts need it)."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core.errors import InputError
from pipeline.core.specs import VideoSpec
from pipeline.core.visual_prompts import exemplars_need_text

DEVICES = ("auto", "cpu", "cuda")


def check_prompts(prompts: list[str], objects: bool = False, exemplars: bool = False) -> None:
    """Empty ones; their token count needs the tokenizer and is checked with the model.
    ``objects``: objects are given, so no text prompt is needed; ``exemplars``: exemplars are
    given, which need one (they sharpen it)."""
    if exemplars and not prompts:
        raise InputError(f"--exemplar: {exemplars_need_text('--prompt')}")
    if not prompts and not objects:
        raise InputError("--prompt: at least one text prompt is required (or --point, --box, --mask)")
    if any(not p.strip() for p in prompts):
        raise InputError("--prompt: a prompt is empty or whitespace")


def _no_nvidia_driver() -> bool:
    # Without the kernel driver there is no CUDA, whatever torch says; torch's own answer costs its
    # import (seconds) and is asked again when the model loads.
    return sys.platform.startswith("linux") and not Path("/proc/driver/nvidia/version").exists()


def check_device(device: str) -> None:
    if device not in DEVICES:
        raise InputError(f"--device {device!r}: expected auto, cpu or cuda")
    if device == "cuda" and _no_nvidia_driver():
        raise InputError("--device cuda: no CUDA device is available on this machine (use --device cpu)")


def check_video(video: Path):
    """Exists and is a video (ffprobe; the same reasons as the probe task); its VideoInfo."""
    from workers.media.probe import probe

    return probe(video, name=str(video))


def check_visual_prompts(spec: VideoSpec, info, video: Path) -> None:
    """The spec's objects and exemplars fit the video (``FieldError`` naming the field), as the
    probe task checks them for a job."""
    from pipeline.core.visual_prompts import check_against_video

    frame_count = info.frames_expected
    if frame_count is None:
        # A container without a frame count (rare): counted as prepare counts it. That module
        # imports torch, a few seconds the model load pays next anyway.
        from workers.chunks.video_steps import count_frames

        frame_count = count_frames(video, str(video))
    check_against_video(spec, info.width, info.height, frame_count)


def check_model(model: str) -> None:
    from workers.model.model_source import check_model_source

    check_model_source(model)


def check_segment(video: Path, spec: VideoSpec, model: str, device: str) -> None:
    """Everything `sam3v segment` can refuse without the model, cheapest first. A visual prompt
    that does not fit the video raises ``FieldError`` (the caller names its flag)."""
    check_prompts(spec.prompts, bool(spec.objects), bool(spec.exemplars))
    check_device(device)
    info = check_video(video)
    if spec.has_visual_prompts():
        check_visual_prompts(spec, info, video)
    check_model(model)
