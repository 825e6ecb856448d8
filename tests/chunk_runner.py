"""Run ONE chunk of a video in this process, state passed only through files (for tests).

usage: python -m tests.chunk_runner MODEL_DIR VIDEO ARTIFACTS_DIR K CHUNK_FRAMES NUM_FRAMES SEGMENT_FRAMES
"""

from __future__ import annotations

import sys

from pipeline.core.planning import plan_chunks
from pipeline.core.storage import LocalStorage
from workers.chunk_runner import ChunkJob, segment_chunk
from workers.model import load_model
from workers.probe import probe


def main(model: str, video: str, artifacts: str, k: str, chunk_frames: str, num_frames: str, segment_frames: str) -> None:
    loaded = load_model(model, "cpu")
    chunk = plan_chunks(int(num_frames), int(chunk_frames))[int(k)]
    job = ChunkJob(probe(video), chunk, int(num_frames), ["dog"], ["overlay", "mask"],
                   segment_frames=int(segment_frames))
    segment_chunk(job, loaded, LocalStorage(artifacts),
                  progress=lambda n: print(f"frame {n}", flush=True))
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
