"""Probe a local video file with ffprobe: size, orientation, frame rate, frame count, audio.

Only ffprobe (a subprocess) is used, so this module is cheap to import and safe on the cpu queue.
Every failure that is the input's fault becomes an ``InputError`` whose one-line message names
the file, so a bad video in a job of thousands is easy to find.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from pipeline.core.errors import InputError, ProcessingError

FFPROBE_TIMEOUT_S = 120.0

# Demuxers that read single pictures. ffprobe happily "probes" a PNG renamed .mp4 as a one-frame
# video stream (codec png, format png_pipe), which must not pass as a video.
_IMAGE_FORMATS = {"image2", "image2pipe"}


@dataclass(frozen=True)
class VideoInfo:
    path: str
    width: int  # displayed width (after rotation)
    height: int  # displayed height
    coded_width: int  # width of decoded frames before rotation (not the codec's padded size)
    coded_height: int
    rotation: int  # clockwise degrees to turn decoded frames for display: 0, 90, 180 or 270
    fps: float  # average frame rate
    fps_rational: str  # e.g. "30000/1001"
    frames_expected: int | None  # frame count the container header promises, None if unknown
    duration: float | None  # seconds
    start_time: float  # first video pts in seconds
    video_codec: str
    pix_fmt: str
    has_audio: bool
    audio_codec: str | None
    container: str  # ffprobe format_name, e.g. "mov,mp4,m4a,3gp,3g2,mj2"
    video_stream_index: int = 0  # index of the chosen video stream in the container


def probe(path: str | os.PathLike[str], name: str | None = None) -> VideoInfo:
    """Describe the video at ``path``; raise ``InputError`` if it is not a usable video file.
    ``name``: what the user called it (a URI), for messages; default ``path``. A worker's copy of
    an input lives under its cache, a path that means nothing to the user who sent the URI."""
    local = os.fspath(path)
    name = name or local
    _check_file(local, name)
    data = _run_ffprobe(local, name)
    container = str(data.get("format", {}).get("format_name", ""))
    streams: list[dict[str, Any]] = data.get("streams", [])
    if container in _IMAGE_FORMATS or container.endswith("_pipe"):
        raise InputError(f"{name} is not a video file (ffprobe: still image, format {container})")
    video = _pick_video_stream(streams)
    if video is None:
        raise InputError(f"{name} has no video stream")
    return _build_info(local, name, container, data.get("format", {}), video, streams)


def _check_file(local: str, name: str) -> None:
    # ffprobe's own messages for these cases ("moov atom not found") do not tell a user much.
    if not os.path.exists(local):
        raise InputError(f"no such file: {name}")
    if os.path.isdir(local):
        raise InputError(f"{name} is a directory, not a video file")
    if os.path.getsize(local) == 0:
        raise InputError(f"{name} is empty (0 bytes), not a video file")


def _run_ffprobe(local: str, name: str) -> dict[str, Any]:
    # "file:" stops ffprobe reading a name like "concat:a|b" or "x:y.mp4" as a protocol URL.
    cmd = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
           "file:" + local]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              timeout=FFPROBE_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError as err:
        raise ProcessingError("ffprobe is not installed or not on PATH (install ffmpeg)") from err
    except subprocess.TimeoutExpired as err:
        raise InputError(f"{name} is not a video file (ffprobe: timed out after "
                         f"{FFPROBE_TIMEOUT_S:.0f} s)") from err
    if proc.returncode != 0:
        raise InputError(f"{name} is not a video file (ffprobe: {_short_reason(proc.stderr, local, name)})")
    try:
        data = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError as err:
        raise ProcessingError(f"ffprobe printed unreadable JSON for {name}") from err
    if not data.get("streams"):
        raise InputError(f"{name} is not a video file (ffprobe: no streams found)")
    return data


def _short_reason(stderr: str, local: str, name: str) -> str:
    """ffprobe's last error line without the file name it starts with, kept to one short line;
    ``local`` elsewhere in it reads ``name``."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    if not lines:
        return "unknown error"
    reason = lines[-1]
    for prefix in ("file:" + local + ":", local + ":"):
        if reason.startswith(prefix):
            reason = reason[len(prefix) :].strip()
            break
    return reason.replace(local, name)[:160]


def _pick_video_stream(streams: list[dict[str, Any]]) -> dict[str, Any] | None:
    # Cover art in an mp3/m4a is a "video" stream with the attached_pic disposition: not a video.
    for stream in streams:
        if stream.get("codec_type") != "video":
            continue
        if stream.get("disposition", {}).get("attached_pic"):
            continue
        return stream
    return None


def _build_info(local: str, name: str, container: str, fmt: dict[str, Any], video: dict[str, Any],
                streams: list[dict[str, Any]]) -> VideoInfo:
    coded_w, coded_h = int(video.get("width") or 0), int(video.get("height") or 0)
    if coded_w <= 0 or coded_h <= 0:
        raise InputError(f"{name} is not a video file (ffprobe: video stream has no frame size)")
    rotation = rotation_of(video)
    width, height = (coded_h, coded_w) if rotation in (90, 270) else (coded_w, coded_h)
    fps_rational, fps = _frame_rate(video)
    frames_expected = _int_or_none(video.get("nb_frames"))
    if frames_expected == 0:
        raise InputError(f"{name} has no video frames")
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    return VideoInfo(
        path=local,
        width=width,
        height=height,
        coded_width=coded_w,
        coded_height=coded_h,
        rotation=rotation,
        fps=fps,
        fps_rational=fps_rational,
        frames_expected=frames_expected,
        duration=_float_or_none(video.get("duration")) or _float_or_none(fmt.get("duration")),
        start_time=_float_or_none(video.get("start_time")) or 0.0,
        video_codec=str(video.get("codec_name", "unknown")),
        pix_fmt=str(video.get("pix_fmt", "")),
        has_audio=audio is not None,
        audio_codec=str(audio.get("codec_name", "unknown")) if audio else None,
        container=container,
        video_stream_index=int(video.get("index", 0)),
    )


def rotation_of(stream: dict[str, Any]) -> int:
    """Clockwise degrees (0/90/180/270) to turn decoded frames so they display upright.

    ffprobe's Display Matrix ``rotation`` is av_display_rotation_get(): the matrix's rotation
    *counter-clockwise*. A portrait phone video reads -90 there, and ffmpeg's own autorotate turns
    its frames 90 degrees clockwise, so the clockwise turn is the negated value. The legacy
    ``rotate`` tag (older ffprobe, some containers) already states the clockwise turn.
    The display matrix wins when both exist, as in ffmpeg and decord.
    """
    for side_data in stream.get("side_data_list", []) or []:
        if side_data.get("side_data_type") == "Display Matrix" and "rotation" in side_data:
            return _quarter_turns(-float(side_data["rotation"]))
    tag = (stream.get("tags") or {}).get("rotate")
    if tag:
        try:
            return _quarter_turns(float(tag))
        except ValueError:
            return 0
    return 0


def _quarter_turns(degrees: float) -> int:
    # Frames can only be turned by whole quarter turns; an odd angle snaps to the nearest one.
    return int(round(degrees / 90.0)) % 4 * 90


def _frame_rate(video: dict[str, Any]) -> tuple[str, float]:
    # avg_frame_rate is the true average for VFR; r_frame_rate is the timebase-ish "real base rate"
    # and only a fallback for streams whose average is unknown ("0/0").
    for key in ("avg_frame_rate", "r_frame_rate"):
        text = str(video.get(key, "0/0"))
        try:
            value = Fraction(text)
        except (ValueError, ZeroDivisionError):
            continue
        if value > 0:
            return text, float(value)
    return "0/1", 0.0


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def _float_or_none(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
