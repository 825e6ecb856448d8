"""Overlap of the three stages: wall time of `segment` vs the slowest stage's busy time.

Decode, model and render (RLE + composite + encode) run concurrently; if they overlap well the
wall time is close to the busiest stage's. Target: wall at most 1.15x the slowest stage.
Run: .venv/bin/python -m benchmarks.bench_overlap [VIDEO] [--frames N] [--model DIR]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.common import VIDEO_720P, machine
from pipeline.core.specs import VideoOptions
from pipeline.core.storage import LocalStorage
from workers.chunks.video_steps import segment_video
from workers.model.loading import load_model
from workers.model.tiny_model import save_tiny_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("video", nargs="?", type=Path, default=VIDEO_720P)
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--model", default=None, help="model dir or id (default: a fresh tiny model)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-overlap-"))
    model = args.model or str(save_tiny_model(tmp / "tiny"))
    loaded = load_model(model, args.device)
    opts = VideoOptions(outputs=["overlay", "mask"], max_frames=args.frames)
    result = segment_video(args.video, loaded, opts, ["dog"], LocalStorage(tmp / "out"))
    t = result.timings
    stages = {k: t[k] for k in ("decode", "model", "render")}
    slowest = max(stages, key=stages.get)
    print(f"machine: {machine()}; device {loaded.device}; model {'tiny' if loaded.is_tiny else model}")
    print(f"video: {args.video.name}, {result.num_frames} frames, outputs overlay+mask")
    print("busy s: " + ", ".join(f"{k} {v:.2f}" for k, v in stages.items()) + f"; mux {t['mux']:.2f}; wall {t['wall']:.2f}")
    print(f"ratio (wall / slowest stage '{slowest}', target <= 1.15): {t['wall'] / stages[slowest]:.2f}x")


if __name__ == "__main__":
    main()
