"""Visual objects: a video's object prompts (points, a box, a mask on a frame) grouped into objects,
with their ids and how masks.json describes them. No torch here: this is the model's input plan.

A video's ``objects`` (``pipeline.core.visual_prompts.ObjectPrompt``) may name an id; prompts
with the same id are one object given on several frames; a prompt without an id is an object of
its own. Ids the caller chose are kept; the others take the smallest ids nobody chose, in the
order given. Objects found by text prompts are numbered after every visual object (the text
tracker's session starts at ``max_visual_id``), so the two kinds share one id space.

Coordinates are pixels of the displayed frame (as ``bbox`` in masks.json); frames are source
frame indices, turned here into the model's numbering (0 at ``start_frame``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.core.errors import InputError
from workers.media import rle


@dataclass(frozen=True)
class FramePrompt:
    """One object's prompt on one frame, in pixels of the displayed frame."""

    frame: int  # model frame number (0 at start_frame)
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()  # 1 positive, 0 negative, one per point
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    mask: np.ndarray | None = None  # (H, W) bool

    def __post_init__(self):
        if self.mask is not None and (self.points or self.box is not None):
            raise InputError(f"frame {self.frame}: a mask prompt cannot be combined with points or a box on the "
                             "same frame (SAM's tracker takes one or the other)")


@dataclass(frozen=True)
class VisualObject:
    obj_id: int
    prompts: tuple[FramePrompt, ...]  # by frame, ascending
    description: Any  # masks.json's "prompt" for this object

    @property
    def first(self) -> int:
        return self.prompts[0].frame

    @property
    def last(self) -> int:
        return self.prompts[-1].frame

    def on(self, frame: int) -> FramePrompt | None:
        return next((p for p in self.prompts if p.frame == frame), None)


def _field(prompt, name: str):
    value = getattr(prompt, name, None)
    return prompt.get(name) if value is None and isinstance(prompt, dict) else value


def _describe(prompt, frame: int) -> dict:
    """How masks.json says an object was prompted on one frame (source frame, pixels as given)."""
    entry: dict[str, Any] = {"frame": frame}
    if _field(prompt, "box") is not None:
        entry["box"] = [float(v) for v in _field(prompt, "box")]
    if _field(prompt, "points") is not None:
        entry["points"] = [[float(x), float(y)] for x, y in _field(prompt, "points")]
        entry["labels"] = [int(v) for v in (_field(prompt, "labels") or [1] * len(entry["points"]))]
    if _field(prompt, "mask") is not None:
        mask = _field(prompt, "mask")
        entry["mask"] = {"size": list(mask["size"]), "bbox": rle.bbox(mask)}
    return entry


def _frame_prompt(prompt, model_frame: int, height: int, width: int, where: str) -> FramePrompt:
    points = _field(prompt, "points") or []
    labels = _field(prompt, "labels")
    labels = [1] * len(points) if labels is None else list(labels)
    if len(labels) != len(points):
        raise InputError(f"{where}: {len(points)} points but {len(labels)} labels")
    box = _field(prompt, "box")
    xyxy = None
    if box is not None:
        x, y, w, h = (float(v) for v in box)
        xyxy = (x, y, x + w, y + h)
    mask = None
    raw = _field(prompt, "mask")
    if raw is not None:
        if [int(v) for v in raw["size"]] != [height, width]:
            raise InputError(f"{where}: mask of size {list(raw['size'])} (h, w), the video's frames are "
                             f"[{height}, {width}]")
        mask = rle.decode(raw)
    if not points and xyxy is None and mask is None:
        raise InputError(f"{where}: give points, a box or a mask")
    return FramePrompt(model_frame, tuple((float(x), float(y)) for x, y in points), tuple(int(v) for v in labels),
                       xyxy, mask)


def visual_objects(objects: Sequence, start_frame: int, height: int, width: int,
                   num_frames: int | None = None) -> list[VisualObject]:
    """The video's objects from its object prompts (``ObjectPrompt`` or dicts of the same fields),
    ids assigned, ordered by id; ``num_frames``: the frames processed from ``start_frame`` on."""
    chosen = {int(_field(p, "id")) for p in objects if _field(p, "id") is not None}
    free = (i for i in range(len(chosen) + len(objects) + 1) if i not in chosen)
    groups: dict[int, list[tuple[int, object]]] = {}
    for n, prompt in enumerate(objects):
        obj_id = _field(prompt, "id")
        obj_id = next(free) if obj_id is None else int(obj_id)
        groups.setdefault(obj_id, []).append((n, prompt))
    found = []
    for obj_id, given in sorted(groups.items()):
        by_frame: dict[int, FramePrompt] = {}
        descriptions = []
        for n, prompt in sorted(given, key=lambda item: int(_field(item[1], "frame"))):
            frame = int(_field(prompt, "frame"))
            where = f"objects[{n}] (id {obj_id}, frame {frame})"
            if frame < start_frame:
                raise InputError(f"{where}: frame {frame} is before start_frame {start_frame}")
            if num_frames is not None and frame >= start_frame + num_frames:
                raise InputError(f"{where}: frame {frame} is past the last frame processed "
                                 f"({start_frame + num_frames - 1})")
            if frame - start_frame in by_frame:
                raise InputError(f"{where}: object {obj_id} is given twice on frame {frame}; give it once per "
                                 "frame (points and a box together in one prompt)")
            by_frame[frame - start_frame] = _frame_prompt(prompt, frame - start_frame, height, width, where)
            descriptions.append(_describe(prompt, frame))
        found.append(VisualObject(obj_id, tuple(by_frame.values()),
                                  descriptions[0] if len(descriptions) == 1 else descriptions))
    return found


def max_visual_id(objects: Sequence[VisualObject]) -> int:
    """The highest visual object id (-1: none): text-found objects are numbered after it."""
    return max((o.obj_id for o in objects), default=-1)
