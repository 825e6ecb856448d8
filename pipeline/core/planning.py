"""Plan a video as chunks of frames, and the fixed grid its encoded parts follow.

A video with visual objects prompted after its first frame has a backward pass too
(``plan_backward``): chunks on the same grid, run last first, before the forward chunks.

Pure arithmetic, no torch: the producer plans chunks without loading the data plane.

The encoded video is cut on a grid of ``PART_FRAMES`` frames that does not depend on the
chunk size. Each grid part is encoded by one encoder run, so a chunked run and an unchunked one
produce the very same part files, and the joined videos are frame-identical.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.core.errors import InputError

PART_FRAMES = 64  # frames per encoded part (a keyframe at least this often)
DEFAULT_CHUNK_SECONDS = 10.0


@dataclass(frozen=True)
class Chunk:
    index: int
    start: int  # first frame given to the model (an index in the source video)
    stop: int  # one past the last frame given to the model
    final: bool  # the planned last chunk: flushes the hotstart buffer


def frames_to_process(total: int | None, start_frame: int, max_frames: int | None, video: str) -> int | None:
    """How many frames a run processes from ``start_frame``: at most ``max_frames``, and no more
    than the ``total`` the header promises (None or 0: unknown). None when nothing bounds the run
    (the stream's end decides). A start at or past the end is the user's error, said before any work.
    """
    if total and start_frame >= total:
        raise InputError(f"{video}: start_frame {start_frame} is past the end of the video: it has {total} "
                         f"frames (0 to {total - 1})")
    limits = [n for n in (total - start_frame if total else None, max_frames) if n]
    return min(limits) if limits else None


def plan_chunks(num_frames: int, chunk_frames: int | None, start_frame: int = 0) -> list[Chunk]:
    """Split [start_frame, start_frame + num_frames) into chunks of ``chunk_frames`` (None or 0: one).

    Boundaries count from ``start_frame``, so a run that starts later is chunked as if the video
    began there.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames must be at least 1, got {num_frames}")
    if chunk_frames is not None and chunk_frames < 0:
        raise ValueError(f"chunk_frames must be >= 0, got {chunk_frames}")
    if start_frame < 0:
        raise ValueError(f"start_frame must be >= 0, got {start_frame}")
    size = chunk_frames or num_frames
    end = start_frame + num_frames
    starts = list(range(start_frame, end, size))
    return [Chunk(k, a, min(a + size, end), k == len(starts) - 1) for k, a in enumerate(starts)]


def plan_backward(chunks: list[Chunk], span: int, start_frame: int = 0) -> list[Chunk]:
    """The backward pass's chunks, in the order they run: visual objects tracked from their last
    prompt (model frame ``span - 1``) back to ``start_frame``, on the forward chunks' grid.

    Backward chunk k covers forward chunk k's frames below ``start_frame + span`` and runs them in
    decreasing order; its tracker state goes to chunk k - 1 and its masks to forward chunk k, which
    writes them. ``final`` marks the last to run (chunk 0). Nothing to plan when ``span`` is 0.
    """
    if span < 0:
        raise ValueError(f"span must be >= 0, got {span}")
    end = start_frame + span
    if chunks and end > chunks[-1].stop:
        raise ValueError(f"the backward pass ends at frame {end - 1}, after the last planned frame {chunks[-1].stop - 1}")
    return [Chunk(c.index, c.start, min(c.stop, end), c.index == 0) for c in reversed(chunks) if c.start < end]


def default_chunk_frames(fps: float, seconds: float = DEFAULT_CHUNK_SECONDS) -> int:
    return max(1, round(fps * seconds))


def encode_limit(stop: int, final: bool, end: int, hotstart_delay: int,
                 part_frames: int = PART_FRAMES, start_frame: int = 0) -> int:
    """Frames below this index are composited and encoded by the chunk that ends at ``stop``.

    A chunk emits frames whose hotstart window has closed, [.., stop - (delay - 1)); of those it
    encodes only whole grid parts. The rest are replayed (decoded again, drawn from their RLE)
    by the next chunk. The final chunk encodes everything, up to ``end`` (one past the last frame).
    The grid counts from ``start_frame``, the first processed frame: part g holds frames
    [start_frame + g * part_frames, ...), whatever the chunk size.
    """
    if final:
        return end
    emitted = max(0, stop - max(0, hotstart_delay - 1) - start_frame)
    return start_frame + (emitted // part_frames) * part_frames
