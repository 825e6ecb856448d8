"""Give the encoded video the source's timestamps and audio.

The encoder numbers frames at a constant rate. For a constant-rate source that is already right;
for a variable-rate source the packets are rewritten with the source's own timestamps (PyAV
remux, no re-encode). The source's audio is then stream-copied, or transcoded to AAC where the
output container cannot hold its codec.
"""

from __future__ import annotations

import subprocess
from fractions import Fraction
from pathlib import Path

import av

from pipeline.core.errors import ProcessingError

_TIME_BASE = Fraction(1, 90000)


def is_constant_rate(pts: list[float], fps: float) -> bool:
    """True when every frame sits within a quarter frame of first_pts + i / fps."""
    if len(pts) < 2 or fps <= 0:
        return True
    return all(abs(t - (pts[0] + i / fps)) < 0.25 / fps for i, t in enumerate(pts))


def retime(encoded: Path, pts: list[float], out: Path) -> None:
    """Rewrite video packet timestamps with ``pts`` (seconds). Needs an encode without B-frames."""
    with av.open(str(encoded)) as src, av.open(str(out), "w", format="mp4") as dst:
        s_in = src.streams.video[0]
        s_out = dst.add_stream_from_template(s_in)
        s_out.time_base = _TIME_BASE
        ticks = [round((t - pts[0]) / _TIME_BASE) for t in pts]
        frame = 0
        for packet in src.demux(s_in):
            if packet.dts is None:  # the demuxer's final flush packet
                continue
            if frame >= len(ticks):
                raise ProcessingError(f"{encoded.name}: more video packets than source timestamps")
            nxt = ticks[frame + 1] if frame + 1 < len(ticks) else ticks[frame] + (ticks[frame] - ticks[frame - 1] if frame else 3000)
            packet.pts = packet.dts = ticks[frame]
            packet.duration = max(1, nxt - ticks[frame])
            packet.time_base = _TIME_BASE
            packet.stream = s_out
            dst.mux(packet)
            frame += 1
    if frame != len(ticks):
        raise ProcessingError(f"{encoded.name}: {frame} video packets for {len(ticks)} frames")


def _ffmpeg(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *args],
                          capture_output=True, text=True)


def add_audio(video: Path, source: Path, out: Path, duration: float | None, start: float | None = None) -> str:
    """Mux the source's first audio stream next to ``video``. Returns "copy" or "aac".

    ``start``: the source time (seconds, the source's own timestamps) that plays at the video's 0,
    when the video starts part-way into the source; ``duration``: where the audio stops.
    """
    # -seek_timestamp: ``start`` is a timestamp of the source, not an offset from its start_time.
    # A stream copy keeps what the demuxer's seek lands before ``start`` (about a second of AAC)
    # with negative times, and the mp4 muxer's edit list skips it: the cut is sample-exact where
    # the file plays, and the audio is not re-encoded (tests/test_video_options.py times a tone).
    seek = [] if start is None else ["-seek_timestamp", "1", "-ss", f"{start:.6f}"]
    base = ["-i", str(video), *seek, "-i", str(source), "-map", "0:v:0", "-map", "1:a:0", "-c:v", "copy"]
    limit = ["-t", f"{duration:.6f}"] if duration is not None else []
    tail = [*limit, "-movflags", "+faststart", "-f", "mp4", str(out)]
    done = _ffmpeg([*base, "-c:a", "copy", *tail])
    if done.returncode == 0:
        return "copy"
    done = _ffmpeg([*base, "-c:a", "aac", "-b:a", "192k", *tail])
    if done.returncode == 0:
        return "aac"
    raise ProcessingError(f"could not add the audio of {source.name}: {done.stderr.strip()[-300:]}")
