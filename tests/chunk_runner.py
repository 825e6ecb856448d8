"""Run ONE chunk of a video in this process, state passed only through files (for tests).

usage: python -m tests.chunk_runner MODEL_DIR VIDEO ARTIFACTS_DIR K CHUNK_FRAMES NUM_FRAMES PART_FRAMES
"""

from __future__ import annotations

import sys

from pipeline.core.layout import WorkKeys
from pipeline.core.planning import plan_chunks
from pipeline.core.storage import LocalStorage
from workers.chunks.chunk_runner import ChunkInputs, run_chunk_inputs
from workers.media.probe import probe
from workers.model.loading import load_model


def main(model: str, video: str, artifacts: str, k: str, chunk_frames: str, num_frames: str, part_frames: str) -> None:
    loaded = load_model(model, "cpu")
    chunk = plan_chunks(int(num_frames), int(chunk_frames))[int(k)]
    job = ChunkInputs(probe(video), chunk, int(num_frames), ["dog"], ["overlay", "mask"],
                      part_frames=int(part_frames))
    run_chunk_inputs(job, loaded, LocalStorage(artifacts), WorkKeys(),
                     progress=lambda n: print(f"frame {n}", flush=True))
    print("done", flush=True)


if __name__ == "__main__":
    main(*sys.argv[1:])
