"""What `sam3v segment` and `sam3v run` check before the model loads (17-23 s for real weights):
prompts, the input file, the device and the model's source. None of it imports torch."""

from __future__ import annotations

import sys
from pathlib import Path

from pipeline.core.errors import InputError

DEVICES = ("auto", "cpu", "cuda")


def check_prompts(prompts: list[str]) -> None:
    """Empty ones; their token count needs the tokenizer and is checked with the model."""
    if not prompts:
        raise InputError("--prompt: at least one text prompt is required")
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


def check_video(video: Path) -> None:
    """Exists and is a video (ffprobe; the same reasons as the probe task)."""
    from workers.media.probe import probe

    probe(video, name=str(video))


def check_model(model: str) -> None:
    from workers.model.model_source import check_model_source

    check_model_source(model)


def check_segment(video: Path, prompts: list[str], model: str, device: str) -> None:
    """Everything `sam3v segment` can refuse without the model, cheapest first."""
    check_prompts(prompts)
    check_device(device)
    check_video(video)
    check_model(model)
