"""Independent checks on output files with the ffmpeg/ffprobe CLIs (not our own decoder)."""

from __future__ import annotations

import json
import subprocess
from fractions import Fraction
from pathlib import Path

import numpy as np


def streams(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-print_format", "json", "-show_streams", "-show_format", str(path)],
        capture_output=True, text=True, check=True,
    )
    return json.loads(out.stdout)


def video_stream(path: Path) -> dict:
    return next(s for s in streams(path)["streams"] if s["codec_type"] == "video")


def has_audio(path: Path) -> bool:
    return any(s["codec_type"] == "audio" for s in streams(path)["streams"])


def fps(stream: dict) -> Fraction:
    return Fraction(stream["avg_frame_rate"])


def duration(path: Path) -> float:
    return float(video_stream(path)["duration"])


def frames_rgb(path: Path, width: int, height: int) -> np.ndarray:
    """Every frame as (N, H, W, 3) uint8, decoded (and autorotated) by the ffmpeg CLI."""
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, height, width, 3)
