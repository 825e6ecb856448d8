"""Plan a video as chunks of frames, and the fixed grid its encoded segments follow.

Pure arithmetic, no torch: the producer plans chunks without loading the data plane.

The encoded video is cut on a grid of ``SEGMENT_FRAMES`` frames that does not depend on the
chunk size. Each grid segment is encoded by one encoder run, so a chunked run and an unchunked one
produce the very same segment files, and the stitched videos are frame-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

SEGMENT_FRAMES = 64  # frames per encoded segment (a keyframe at least this often)
DEFAULT_CHUNK_SECONDS = 10.0


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # first frame given to the model
    stop: int  # one past the last frame given to the model
    final: bool  # the planned last chunk: flushes the hotstart buffer


def plan_chunks(num_frames: int, chunk_frames: int | None) -> list[Chunk]:
    """Split [0, num_frames) into chunks of ``chunk_frames`` (None or 0: one chunk)."""
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if chunk_frames is not None and chunk_frames < 0:
        raise ValueError(f"chunk_frames must be >= 0, got {chunk_frames}")
    size = chunk_frames or num_frames
    starts = list(range(0, num_frames, size))
    return [Chunk(k, a, min(a + size, num_frames), k == len(starts) - 1) for k, a in enumerate(starts)]


def default_chunk_frames(fps: float, seconds: float = DEFAULT_CHUNK_SECONDS) -> int:
    return max(1, round(fps * seconds))


def encode_limit(stop: int, final: bool, num_frames: int, hotstart_delay: int,
                 segment_frames: int = SEGMENT_FRAMES) -> int:
    """Frames below this index are composited and encoded by the chunk that ends at ``stop``.

    A chunk emits frames whose hotstart window has closed, [.., stop - (delay - 1)); of those it
    encodes only whole grid segments. The rest are replayed (decoded again, drawn from their RLE)
    by the next chunk. The final chunk encodes everything.
    """
    if final:
        return num_frames
    emitted = max(0, stop - max(0, hotstart_delay - 1))
    return (emitted // segment_frames) * segment_frames
