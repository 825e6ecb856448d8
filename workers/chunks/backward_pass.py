"""The backward pass of visual objects: each object tracked from its prompts back to the first frame.

An object prompted on frame 40 is tracked forwards from 40 by the forward run (the chunk runner's
``VideoTracker``) and backwards from its last prompt down to the video's first processed frame
here, as Meta's predictor does with ``propagate_in_video(direction="both")``: a second
session of SAM 3's tracker that takes frames in decreasing order (``VisualSession(reverse=True)``).
Its masks are kept for the frames before each object's first prompt (from there on, the forward
run's masks stand) and handed to the forward run, which writes them with that frame's other objects.

The pass runs before the forward run, so every frame is drawn once, in order. Frames are decoded
forwards in segments of ``SEGMENT_FRAMES``, the last segment first, and each segment is tracked in
reverse: at most one segment of decoded frames is held, and the session is pruned after each frame
as the forward one is (``state_pruning.prune_backward``), so its memory is bounded too. The pass runs in one process, in a video's
chunk 0 (the whole pass: chunks in reverse with their own carried state are still to do); its
masks of later chunks' frames travel in the tracker state (``state_codec``), so a chunked run
equals the unchunked one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from pipeline.core.errors import Cancelled
from workers.media.decode import open_reader
from workers.media.frame_objects import FrameObjects
from workers.media.probe import VideoInfo
from workers.model import frame_features
from workers.model.loading import LoadedModel
from workers.model.state_pruning import MemoryWindows, prune_backward
from workers.model.tracker import preprocess
from workers.model.visual_objects import VisualObject
from workers.model.visual_tracker import VisualSession

SEGMENT_FRAMES = 32


def needs_backward(objects: list[VisualObject]) -> list[VisualObject]:
    """The objects with frames before their first prompt (model frame numbers start at 0)."""
    return [o for o in objects if o.first > 0]


def backward_pass(loaded: LoadedModel, info: VideoInfo, objects: list[VisualObject], origin: int,
                  decoder: str = "pyav", strict: bool = False,
                  should_stop: Callable[[], bool] | None = None) -> dict[int, FrameObjects]:
    """Each object's masks on the frames before its first prompt, by model frame number (0 at
    ``origin``, the video's first processed source frame)."""
    objects = needs_backward(objects)
    if not objects:
        return {}
    top = max(o.last for o in objects)
    session = VisualSession(loaded, objects, info.height, info.width, reverse=True, frames=range(top + 1))
    first = {o.obj_id: o.first for o in objects}
    windows = MemoryWindows.of(loaded.model)
    found: dict[int, FrameObjects] = {}
    for start in reversed(range(0, top + 1, SEGMENT_FRAMES)):
        count = min(SEGMENT_FRAMES, top + 1 - start)
        with open_reader(info, start=origin + start, count=count, first=decoder, strict=strict) as reader:
            frames = [(frame.index - origin, frame.rgb) for frame in reader]
        if len(frames) != count:
            raise RuntimeError(f"frames {origin + start}..{origin + start + count - 1} decoded {len(frames)} frames; "
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
    return found


@torch.inference_mode()
def _features(loaded: LoadedModel, rgb) -> frame_features.FrameFeatures:
    """One frame's features, as the forward run computes them for a group of one."""
    pixels = preprocess(rgb, loaded.image_size, loaded.device)[None]
    dtype = loaded.autocast_dtype
    with torch.autocast(device_type=loaded.device.type, dtype=dtype) if dtype else contextlib.nullcontext():
        return frame_features.compute(loaded.model, pixels)[0]
