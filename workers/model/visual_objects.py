"""Visual objects: a video's object prompts (points, a box, a mask on a frame) grouped into objects,
with their ids and how masks.json describes them. No torch here: this is the model's input plan.

A video's ``objects`` (``pipeline.core.visual_prompts.ObjectPrompt``) may name an id; prompts
with the same id are one object given on several frames; a prompt without an id is an object of
its own. Ids the caller chose are kept; the others take the smallest ids nobody chose, in the
order given (``assigned_ids``). Objects found by text prompts are numbered after every visual object (the text
tracker's session starts at ``max_visual_id``), so the two kinds share one id space.

Coordinates are pixels of the displayed frame (as ``bbox`` in masks.json); frames are source
frame indices, turned here into the model's numbering (0 at ``start_frame``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.core.errors import InputError
from workers.media import rle

if TYPE_CHECKING:  # the spec is pydantic, which a bare GPU machine (benchmarks) does not have
    from pipeline.core.visual_prompts import Exemplar, ObjectPrompt


@dataclass(frozen=True)
class FramePrompt:
    """One object's prompt on one frame, in pixels of the displayed frame."""

    frame: int  # model frame number (0 at start_frame)
    points: tuple[tuple[float, float], ...] = ()
    labels: tuple[int, ...] = ()  # 1 positive, 0 negative, one per point
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    mask: np.ndarray | None = None  # (H, W) bool; with points or a box, SAM's mask prompt beside them


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


def _describe(prompt: ObjectPrompt) -> dict:
    """How masks.json says an object was prompted on one frame (source frame, pixels as given)."""
    entry: dict[str, Any] = {"frame": prompt.frame}
    if prompt.box is not None:
        entry["box"] = [float(v) for v in prompt.box]
    if prompt.points is not None:
        entry["points"] = [[float(x), float(y)] for x, y in prompt.points]
        entry["labels"] = prompt.point_labels()
    if prompt.mask is not None:
        entry["mask"] = {"size": list(prompt.mask.size), "bbox": rle.bbox(prompt.mask.model_dump())}
    return entry


def _frame_prompt(prompt: ObjectPrompt, model_frame: int, height: int, width: int, where: str) -> FramePrompt:
    xyxy = None
    if prompt.box is not None:
        x, y, w, h = (float(v) for v in prompt.box)
        xyxy = (x, y, x + w, y + h)
    mask = None
    if prompt.mask is not None:
        if list(prompt.mask.size) != [height, width]:
            raise InputError(f"{where}.mask: size {list(prompt.mask.size)} ([height, width]), the video's frames "
                             f"are [{height}, {width}]")
        mask = rle.decode(prompt.mask.model_dump())
    return FramePrompt(model_frame, tuple((float(x), float(y)) for x, y in prompt.points or ()),
                       tuple(prompt.point_labels()), xyxy, mask)


def visual_objects(objects: Sequence[ObjectPrompt | dict], start_frame: int, height: int, width: int,
                   num_frames: int | None = None) -> list[VisualObject]:
    """The video's objects from its object prompts (dicts are validated as ``ObjectPrompt``), ids
    assigned as ``assigned_ids`` does, ordered by id; ``num_frames``: frames processed from
    ``start_frame`` on. What the spec's validation already refuses is refused here too: a worker
    may get a task written by another version."""
    from pipeline.core.visual_prompts import ObjectPrompt, assigned_ids

    prompts = [p if isinstance(p, ObjectPrompt) else ObjectPrompt.model_validate(p) for p in objects]
    groups: dict[int, list[tuple[int, ObjectPrompt]]] = {}
    for n, (obj_id, prompt) in enumerate(zip(assigned_ids(prompts), prompts)):
        groups.setdefault(obj_id, []).append((n, prompt))
    found = []
    for obj_id, given in sorted(groups.items()):
        by_frame: dict[int, FramePrompt] = {}
        descriptions = []
        for n, prompt in sorted(given, key=lambda item: item[1].frame):
            frame = prompt.frame
            where = f"objects[{n}]"
            if frame < start_frame:
                raise InputError(f"{where}.frame: {frame} is before start_frame {start_frame}")
            if num_frames is not None and frame >= start_frame + num_frames:
                raise InputError(f"{where}.frame: {frame} is past the last frame processed "
                                 f"({start_frame + num_frames - 1})")
            if frame - start_frame in by_frame:
                raise InputError(f"{where}.id: object {obj_id} is already given on frame {frame}: give its "
                                 "points, box and mask in one entry")
            by_frame[frame - start_frame] = _frame_prompt(prompt, frame - start_frame, height, width, where)
            descriptions.append(_describe(prompt))
        found.append(VisualObject(obj_id, tuple(by_frame.values()),
                                  descriptions[0] if len(descriptions) == 1 else descriptions))
    return found


def needs_backward(objects: Sequence[VisualObject]) -> list[VisualObject]:
    """The objects with frames before their first prompt: the backward pass tracks them."""
    return [o for o in objects if o.first > 0]


def backward_span(objects: Sequence[VisualObject]) -> int:
    """Frames the backward pass covers, from model frame 0 (0: no pass): up to the last prompt of an
    object it tracks, since every prompt of the object conditions it on the way back."""
    return max((o.last + 1 for o in needs_backward(objects)), default=0)


def max_visual_id(objects: Sequence[VisualObject]) -> int:
    """The highest visual object id (-1: none): text-found objects are numbered after it."""
    return max((o.obj_id for o in objects), default=-1)


def exemplar_boxes(exemplars: Sequence[Exemplar | dict], start_frame: int, height: int, width: int,
                   num_frames: int | None = None) -> dict[int, tuple[list[list[float]], list[int]]]:
    """Exemplars by model frame, as SAM 3's detector takes them: boxes as (cx, cy, w, h) normalised
    by the frame's size (``Sam3Processor``'s form), labels 1 (an example) or 0 (a counter-example)."""
    from pipeline.core.visual_prompts import Exemplar

    found: dict[int, tuple[list[list[float]], list[int]]] = {}
    if exemplars and not geometry_encoder_available():
        raise InputError("exemplars: this installation cannot take exemplars: SAM 3's geometry encoder pools "
                         "each box's features with torchvision.ops.roi_align, and torchvision is not installed "
                         "(install the torchvision build that matches torch, or leave exemplars out)")
    for n, raw in enumerate(exemplars):
        ex = raw if isinstance(raw, Exemplar) else Exemplar.model_validate(raw)
        if not start_frame <= ex.frame < (start_frame + num_frames if num_frames is not None else ex.frame + 1):
            raise InputError(f"exemplars[{n}].frame: {ex.frame} is outside the frames processed")
        x, y, w, h = (float(v) for v in ex.box)
        boxes, labels = found.setdefault(ex.frame - start_frame, ([], []))
        boxes.append([(x + w / 2) / width, (y + h / 2) / height, w / width, h / height])
        labels.append(1 if ex.positive else 0)
    return found


def geometry_encoder_available() -> bool:
    """Whether SAM 3's geometry encoder can run: transformers 5.24 calls ``torchvision.ops.roi_align``
    (``Sam3GeometryEncoder``) and imports torchvision only where it is installed."""
    return importlib.util.find_spec("torchvision") is not None
