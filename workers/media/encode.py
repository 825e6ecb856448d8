"""Encode composited frames: an ffmpeg process fed raw frames through a pipe (ffmpeg-python).

Frames are the ones already decoded for the model, so the source is never decoded twice. ffmpeg
converts rgb24 to yuv420p with swscale inside its own process, which runs beside ours.
"""

from __future__ import annotations

import queue
import subprocess
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import ffmpeg
import numpy as np

from pipeline.core.errors import ProcessingError


@dataclass(frozen=True)
class EncoderSettings:
    codec: str = "auto"  # auto: h264_nvenc where the GPU has an encoder, libx264 otherwise
    preset: str = "veryfast"
    crf: int = 20


@lru_cache(maxsize=1)
def nvenc_available() -> bool:
    """True only if h264_nvenc actually opens (H100/A100 list it but have no NVENC unit)."""
    try:
        probe = subprocess.run(
            ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "lavfi", "-i", "color=black:s=256x256:d=0.1",
             "-frames:v", "1", "-c:v", "h264_nvenc", "-f", "null", "-"],
            capture_output=True, timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def resolve_codec(settings: EncoderSettings) -> str:
    if settings.codec != "auto":
        return settings.codec
    return "h264_nvenc" if nvenc_available() else "libx264"


def even(n: int) -> int:
    return n + (n % 2)


def _codec_args(codec: str, settings: EncoderSettings, no_bframes: bool) -> dict:
    if codec == "h264_nvenc":
        args = {"preset": "p4", "cq": settings.crf, "rc": "vbr"}
    else:
        args = {"preset": settings.preset, "crf": settings.crf}
    if no_bframes:
        # Packets then come in display order, so VFR timestamps can be written back one to one.
        args["bf"] = 0
    return args


# ffmpeg output options of a lossless grey video (the per-object mask videos): FFV1 in Matroska at
# the frames' own size (no padding), every frame a keyframe so an editor seeks anywhere; bitexact
# leaves out the encoder version, the date and Matroska's random segment id, so the same frames give
# the same bytes.
LOSSLESS_GRAY = {"vcodec": "ffv1", "level": 3, "g": 1, "pix_fmt": "gray", "format": "matroska",
                 "fflags": "+bitexact", "flags": "+bitexact"}


class FrameEncoder:
    """Write (H, W, 3) uint8 RGB frames, (H, W) ``gray`` ones or (H * 3 // 2, W) planar ``yuv420p``
    ones; odd sizes are padded to even at the right/bottom edge. ``output``: ffmpeg output options
    that replace the H.264 ones (``LOSSLESS_GRAY``); frames are then written at their own size."""

    def __init__(self, path: Path, width: int, height: int, fps_rational: str,
                 settings: EncoderSettings = EncoderSettings(), no_bframes: bool = False,
                 pix_fmt: str = "rgb24", output: dict | None = None):
        self.path = Path(path)
        self.width, self.height = width, height
        self.frame_shape = {"rgb24": (height, width, 3), "gray": (height, width),
                            "yuv420p": (height * 3 // 2, width)}[pix_fmt]
        self.codec = output["vcodec"] if output else resolve_codec(settings)
        self.frames_written = 0
        stream = ffmpeg.input("pipe:", format="rawvideo", pix_fmt=pix_fmt, s=f"{width}x{height}",
                              framerate=fps_rational)
        if output:
            stream = stream.output(str(self.path), an=None, **output)
        else:
            if (width, height) != (even(width), even(height)):
                stream = stream.filter("pad", even(width), even(height), 0, 0, color="black")
            stream = stream.output(
                str(self.path), vcodec=self.codec, pix_fmt="yuv420p", an=None,
                movflags="+faststart", **_codec_args(self.codec, settings, no_bframes),
                # rgb24 -> yuv420p is a pure format conversion here (no scaling); the default bicubic
                # path took ~1 s of 2.5 s encoding 289 frames of 720p, fast_bilinear ~0.1 s.
                sws_flags="fast_bilinear",
            )
        args = stream.global_args("-hide_banner", "-loglevel", "error", "-nostdin").overwrite_output().compile()
        self._proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self._stderr = bytearray()
        # Drain stderr continuously: a full stderr pipe would block ffmpeg and then us.
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()
        # Writing a frame blocks until ffmpeg has read it; a feeder thread takes that wait off the
        # compositing thread, so drawing the next frame overlaps with ffmpeg reading this one.
        self._frames: queue.Queue = queue.Queue(maxsize=3)
        self._feed_error: BaseException | None = None
        self._feeder = threading.Thread(target=self._feed, daemon=True)
        self._feeder.start()

    def _feed(self) -> None:
        while (frame := self._frames.get()) is not None:
            if self._feed_error is not None:
                continue
            try:
                self._proc.stdin.write(memoryview(frame).cast("B"))
            except BrokenPipeError:
                self._proc.wait()
                self._drain.join()
                self._feed_error = self._error("exited early")
            except BaseException as err:
                self._feed_error = err

    def _read_stderr(self) -> None:
        for chunk in iter(lambda: self._proc.stderr.read(4096), b""):
            self._stderr.extend(chunk)

    def _error(self, what: str) -> ProcessingError:
        tail = self._stderr.decode("utf-8", "replace").strip().splitlines()[-3:]
        return ProcessingError(f"ffmpeg ({self.codec}) {what} writing {self.path.name}: {' | '.join(tail) or 'no message'}")

    def write(self, image: np.ndarray) -> None:
        """Queue one frame. The array must not be modified afterwards (it is written later)."""
        if image.shape != self.frame_shape:
            raise ValueError(f"frame is {image.shape}, encoder expects {self.frame_shape}")
        if self._feed_error is not None:
            raise self._feed_error
        self._frames.put(np.ascontiguousarray(image))
        self.frames_written += 1

    def close(self) -> None:
        self._frames.put(None)
        self._feeder.join()
        try:
            self._proc.stdin.close()
        except BrokenPipeError:
            pass
        code = self._proc.wait()
        self._drain.join()
        if self._feed_error is not None:
            raise self._feed_error
        if code != 0:
            raise self._error(f"failed (exit {code})")

    def abort(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
        self._frames.put(None)
        self._feeder.join()
        self._proc.wait()
        self.path.unlink(missing_ok=True)
