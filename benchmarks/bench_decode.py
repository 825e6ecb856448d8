"""Decode stage vs `ffmpeg -i X -f rawvideo -pix_fmt rgb24 -` on the same 720p file.

Target: our frames/s at least 0.9x ffmpeg's.  Run: .venv/bin/python benchmarks/bench_decode.py [VIDEO]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from benchmarks.common import VIDEO_720P, interleaved, machine
from workers.media.decode import DecodeThread, open_reader
from workers.media.probe import probe


def main() -> None:
    video = Path(sys.argv[1]) if len(sys.argv) > 1 else VIDEO_720P
    info = probe(video)
    counted = {}

    def ours() -> None:
        n = 0
        with DecodeThread(open_reader(info)) as frames:
            for _ in frames:
                n += 1
        counted["ours"] = n

    def ffmpeg_cli() -> None:
        proc = subprocess.Popen(["ffmpeg", "-v", "error", "-i", str(video), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                                stdout=subprocess.PIPE)
        frame = info.coded_width * info.coded_height * 3
        n = 0
        while chunk := proc.stdout.read(frame):
            n += len(chunk) == frame
        proc.wait()
        counted["ffmpeg"] = n

    t_ours, t_ff = interleaved(ours, ffmpeg_cli)
    assert counted["ours"] == counted["ffmpeg"], counted
    n = counted["ours"]
    print(f"machine: {machine()}")
    print(f"video: {video.name} {info.width}x{info.height}, {n} frames, decoder {open_reader(info).backend}")
    print(f"ffmpeg rawvideo rgb24: {n / t_ff:7.1f} frames/s")
    print(f"sam3v decode stage   : {n / t_ours:7.1f} frames/s")
    print(f"ratio (ours / ffmpeg, higher is better, target >= 0.9): {t_ff / t_ours:.2f}x")


if __name__ == "__main__":
    main()
