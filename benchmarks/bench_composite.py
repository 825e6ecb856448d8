"""Composite + encode stage vs a bare `ffmpeg -i X -an -c:v libx264 -preset P -crf C out.mp4`.

Our stage is given the decoded frames and masks (with their boxes) in memory, as in a run, where
the model's frames are reused, and does the overlay + the piped libx264 encode in grid segments as
in a run. The RLE encoding of the masks (part of the mask stage, not of compositing) is timed
separately and printed for reference. Target: at most 1.15x ffmpeg's time.
The drawing alone (no encode) is then timed per overlay style (fill, outline, both, both + labels),
in ms a frame, for what --overlay-style and --labels cost on the hot path.
Run: .venv/bin/python -m benchmarks.bench_composite [VIDEO]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import VIDEO_720P, interleaved, machine
from pipeline.core.planning import PART_FRAMES
from workers.media.composite import OverlayStyle, overlay
from workers.media.decode import open_reader, yuv_capable
from workers.media.encode import EncoderSettings
from workers.media.frame_objects import FrameObjects
from workers.media.masks_document import FrameLog
from workers.media.probe import probe
from workers.media.render import RenderSpec, RenderStage


def moving_masks(n: int, height: int, width: int) -> list[FrameObjects]:
    """Two objects (a disc and a box) that move, about 15% of the frame, like a typical scene."""
    yy, xx = np.mgrid[0:height, 0:width]
    out = []
    for i in range(n):
        cx, cy = width * (0.3 + 0.4 * i / n), height * 0.5
        disc = (xx - cx) ** 2 + (yy - cy) ** 2 < (height * 0.25) ** 2
        box = np.zeros((height, width), bool)
        box[height // 8: height // 3, int(width * 0.6) + i % 50: int(width * 0.85)] = True
        out.append(FrameObjects(i, [0, 1], [0.9, 0.8], ["a", "b"], np.stack([disc, box & ~disc])))
    return out


def style_costs(frames, found, entries) -> dict[str, float]:
    """ms a frame of ``overlay`` alone (RGB, on a copy, as the non-yuv path draws) for each style."""
    styles = {"fill": OverlayStyle.of("fill"), "outline": OverlayStyle.of("outline"),
              "both": OverlayStyle.of("both"), "both+labels": OverlayStyle.of("both", True)}
    out = {}
    for name, style in styles.items():
        start = time.perf_counter()
        for frame, entry in zip(frames, entries):
            objs = found[frame.index]
            overlay(frame.rgb, objs.object_ids, objs.masks, 0.5, [o["bbox"] for o in entry["objects"]],
                    style=style, prompts=objs.prompts)
        out[name] = (time.perf_counter() - start) * 1000 / len(frames)
    return out


def main() -> None:
    video = Path(sys.argv[1]) if len(sys.argv) > 1 else VIDEO_720P
    info = probe(video)
    frames = list(open_reader(info))
    found = moving_masks(len(frames), info.height, info.width)
    settings = EncoderSettings(codec="libx264")
    tmp = Path(tempfile.mkdtemp(prefix="bench-composite-"))

    spec = RenderSpec(info.width, info.height, info.fps_rational, 0.5, settings, PART_FRAMES, len(frames),
                      yuv=yuv_capable(info))
    log = FrameLog()
    rle_start = time.perf_counter()
    entries = [log.add(frame.pts, objs) for frame, objs in zip(frames, found)]
    rle_seconds = time.perf_counter() - rle_start

    def ours() -> None:
        stage = RenderStage(tmp, ["overlay"], spec, FrameLog(), publish=lambda name, g, path: None)
        for frame, entry in zip(frames, entries):
            stage.draw(frame.index, frame, entry, found[frame.index].masks)
        stage.finish()

    def ffmpeg_cli() -> None:
        subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-an", "-c:v", "libx264",
                        "-preset", settings.preset, "-crf", str(settings.crf), str(tmp / "baseline.mp4")], check=True)

    t_ours, t_ff = interleaved(ours, ffmpeg_cli)
    print(f"machine: {machine()}")
    print(f"video: {video.name} {info.width}x{info.height}, {len(frames)} frames; libx264 preset {settings.preset} crf {settings.crf}")
    print(f"ffmpeg decode + libx264        : {t_ff:6.2f} s")
    print(f"sam3v composite + encode       : {t_ours:6.2f} s   (RLE of the same masks, separately: {rle_seconds:.2f} s)")
    print(f"ratio (ours / ffmpeg, lower is better, target <= 1.15): {t_ours / t_ff:.2f}x")
    costs = style_costs(frames, found, entries)
    print("overlay drawing alone, ms/frame: " + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))


if __name__ == "__main__":
    main()
