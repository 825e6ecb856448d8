"""The backward pass of visual objects: each object tracked from its prompts back to the first frame.

An object prompted on frame 40 is tracked forwards from 40 by the forward run (the chunk runner's
``VideoTracker``) and backwards from its last prompt down to the video's first processed frame
here, as Meta's predictor does with ``propagate_in_video(direction="both")``: a second
session of SAM 3's tracker that takes frames in decreasing order (``VisualSession(reverse=True)``).
Its masks are kept for the frames before each object's first prompt (from there on, the forward
run's masks stand) and handed to the forward run, which writes them with that frame's other objects.

The pass runs before the forward run, as chunks of its own on the forward chunks' grid
(``pipeline.core.planning.plan_backward``), last chunk first: backward chunk k tracks forward chunk
k's frames in decreasing order, publishes their masks (``masks.json``, COCO RLE, for forward chunk
k to write) and hands its session to backward chunk k - 1 through the tracker state codec, so a
chunked pass equals the unchunked one bit for bit, as forwards. Within a chunk, frames are decoded
forwards in segments of ``SEGMENT_FRAMES``, the last segment first: at most one segment of decoded
frames is held, and the session is pruned after each frame as the forward one is
(``state_pruning.prune_backward``), so its memory is bounded too.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.core.errors import Cancelled
from pipeline.core.layout import WorkKeys
from pipeline.core.planning import Chunk
from pipeline.core.storage import Storage
from workers.media import rle
from workers.media.decode import open_reader
from workers.media.frame_objects import FrameObjects
from workers.media.probe import VideoInfo
from workers.model import frame_features
from workers.model.loading import LoadedModel
from workers.model.state_codec import JSON_NAME, TENSORS_NAME, StateError, load_backward, save_backward
from workers.model.state_pruning import MemoryWindows, prune_backward
from workers.model.tracker import preprocess
from workers.model.visual_objects import VisualObject, backward_span, needs_backward
from workers.model.visual_tracker import VisualSession

SEGMENT_FRAMES = 32
MASKS_FORMAT = "sam3v.backward-masks"
MASKS_VERSION = 1


def _new_session(loaded: LoadedModel, info: VideoInfo, objects: list[VisualObject]) -> VisualSession:
    # The session numbers the frames it will see, as transformers' tracker holding the whole video does.
    return VisualSession(loaded, objects, info.height, info.width, reverse=True,
                         frames=range(backward_span(objects)))


def _track(loaded: LoadedModel, info: VideoInfo, session: VisualSession, start: int, stop: int, origin: int,
           decoder: str, strict: bool, should_stop: Callable[[], bool] | None,
           progress: Callable[[int], None] | None) -> dict[int, FrameObjects]:
    """Model frames [start, stop) through ``session`` in decreasing order: each object's masks on the
    frames before its first prompt, by model frame number (0 at ``origin``, the first processed frame)."""
    first = {o.obj_id: o.first for o in session.objects.values()}
    span = backward_span(list(session.objects.values()))
    windows = MemoryWindows.of(loaded.model)
    found: dict[int, FrameObjects] = {}
    for seg in reversed(range(start - start % SEGMENT_FRAMES, stop, SEGMENT_FRAMES)):
        a, b = max(seg, start), min(seg + SEGMENT_FRAMES, stop)
        with open_reader(info, start=origin + a, count=b - a, first=decoder, strict=strict) as reader:
            frames = [(frame.index - origin, frame.rgb) for frame in reader]
        if len(frames) != b - a:
            raise RuntimeError(f"frames {origin + a}..{origin + b - 1} decoded {len(frames)} frames; "
                               "a prompt's frame must decode")
        while frames:
            t, rgb = frames.pop()
            if should_stop and should_stop():
                raise Cancelled(f"stopped at frame {t + origin} of the backward pass: its video is no longer wanted")
            out = session.step(t, _features(loaded, rgb))
            prune_backward(session.session, t, windows)
            kept = [i for i, obj_id in enumerate(out.object_ids) if t < first[obj_id]]
            if kept:
                found[t] = FrameObjects(t, [out.object_ids[i] for i in kept], [out.scores[i] for i in kept],
                                        [out.prompts[i] for i in kept], out.masks[kept])
            if progress:
                progress(span - t)  # frames of the backward pass done so far
    return found


def backward_pass(loaded: LoadedModel, info: VideoInfo, objects: list[VisualObject], origin: int,
                  decoder: str = "pyav", strict: bool = False,
                  should_stop: Callable[[], bool] | None = None) -> dict[int, FrameObjects]:
    """The whole pass in one go (one chunk): each object's masks on the frames before its first
    prompt, by model frame number (0 at ``origin``, the video's first processed source frame)."""
    objects = needs_backward(objects)
    if not objects:
        return {}
    session = _new_session(loaded, info, objects)
    return _track(loaded, info, session, 0, backward_span(objects), origin, decoder, strict, should_stop, None)


@torch.inference_mode()
def _features(loaded: LoadedModel, rgb) -> frame_features.FrameFeatures:
    """One frame's features, as the forward run computes them for a group of one."""
    pixels = preprocess(rgb, loaded.image_size, loaded.device)[None]
    dtype = loaded.autocast_dtype
    with torch.autocast(device_type=loaded.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
        return frame_features.compute(loaded.model, pixels)[0]


# --- chunks ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BackwardResult:
    chunk: int
    frames: tuple[int, int]  # source frames [start, stop) tracked


def masks_document(found: dict[int, FrameObjects]) -> bytes:
    """A backward chunk's masks, for the forward chunk that writes those frames (RLE: a chunk of
    full-size bool masks would be gigabytes; prompts are left out, the objects' inputs give them)."""
    frames = [{"frame": t, "ids": [int(i) for i in f.object_ids], "scores": [float(s) for s in f.scores],
               "masks": [rle.encode(m) for m in f.masks]} for t, f in sorted(found.items())]
    return json.dumps({"format": MASKS_FORMAT, "version": MASKS_VERSION, "frames": frames},
                      separators=(",", ":")).encode()


class BackwardMasks:
    """A backward chunk's masks as the forward run reads them: decoded one frame at a time, when the
    frame is pushed (``take``), so a chunk's worth of full-size masks is never held at once."""

    def __init__(self, data: bytes, source: str, objects: list[VisualObject], height: int, width: int):
        described = {o.obj_id: o.description for o in objects}
        try:
            doc = json.loads(data)
            if doc.get("format") != MASKS_FORMAT or doc.get("version") != MASKS_VERSION:
                raise StateError(f"{source}: not a sam3v backward-pass masks file (version {MASKS_VERSION})")
            self._frames = {int(f["frame"]): f for f in doc["frames"]}
            for f in self._frames.values():
                if not set(f["ids"]) <= set(described) or not len(f["ids"]) == len(f["scores"]) == len(f["masks"]):
                    raise StateError(f"{source}: frame {f['frame']} holds objects {f['ids']}, not the video's "
                                     f"{sorted(described)}")
                if any(m["size"] != [height, width] for m in f["masks"]):
                    raise StateError(f"{source}: frame {f['frame']}'s masks are not {height}x{width}")
        except StateError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise StateError(f"{source}: damaged backward-pass masks ({type(err).__name__}: {err})") from err
        self._described = described

    def take(self, t: int) -> FrameObjects | None:
        f = self._frames.pop(t, None)
        if f is None:
            return None
        return FrameObjects(t, list(f["ids"]), list(f["scores"]), [self._described[i] for i in f["ids"]],
                            np.stack([rle.decode(m) for m in f["masks"]]))


def read_masks(artifacts: Storage, work: WorkKeys, k: int, objects: list[VisualObject], height: int,
               width: int) -> BackwardMasks:
    """Backward chunk k's masks, which forward chunk k writes; refused if that chunk has not finished."""
    key = work.backward.masks(k)
    if not artifacts.exists(work.backward.done(k)):
        raise StateError(f"{artifacts.uri(key)}: backward chunk {k} has not finished")
    return BackwardMasks(artifacts.get_bytes(key), artifacts.uri(key), objects, height, width)


def run_backward_chunk(loaded: LoadedModel, info: VideoInfo, objects: list[VisualObject], origin: int,
                       chunk: Chunk, artifacts: Storage, work: WorkKeys, decoder: str = "pyav",
                       strict: bool = False, progress: Callable[[int], None] | None = None,
                       should_stop: Callable[[], bool] | None = None) -> BackwardResult:
    """Backward chunk ``chunk`` (``plan_backward``'s): its frames in decreasing order, the session
    carried in from backward chunk k + 1 (none for the first to run, which holds the last prompt).
    Publishes its masks, then (unless it is chunk 0) the session for chunk k - 1, then its done
    marker last: a chunk killed mid-way and run again from the same state writes the same keys."""
    objects = needs_backward(objects)
    span, k, keys = backward_span(objects), chunk.index, work.backward
    if not chunk.start - origin < span:
        raise ValueError(f"internal: backward chunk {k} (frames {chunk.start}-{chunk.stop - 1}) is past the pass")
    with tempfile.TemporaryDirectory(prefix=f"sam3v-backward{k}-") as tmp:
        state_in, state_out = Path(tmp, "in"), Path(tmp, "out")
        if chunk.stop - origin >= span:  # the first to run: it holds the last prompt
            session = _new_session(loaded, info, objects)
        else:
            state_in.mkdir()
            for name in (JSON_NAME, TENSORS_NAME):
                key = keys.state(k + 1, name)
                if not artifacts.exists(key):
                    raise StateError(f"{artifacts.uri(key)}: missing; backward chunk {k + 1} has not finished")
                (state_in / name).write_bytes(artifacts.get_bytes(key))
            session = load_backward(state_in, loaded, objects)
            if session.last != chunk.stop - origin:
                raise StateError(f"backward chunk {k} ends at frame {chunk.stop - 1} but the state continues "
                                 f"before frame {session.last + origin}")
        found = _track(loaded, info, session, chunk.start - origin, min(chunk.stop - origin, span), origin, decoder,
                       strict, should_stop, progress)
        artifacts.put_bytes(masks_document(found), keys.masks(k))
        if k > 0:
            save_backward(session, state_out)
            for name in (JSON_NAME, TENSORS_NAME):
                artifacts.put_file(state_out / name, keys.state(k, name))
    artifacts.put_bytes(json.dumps({"chunk": k, "frames": [chunk.start, chunk.stop]}).encode(), keys.done(k))
    return BackwardResult(k, (chunk.start, chunk.stop))
