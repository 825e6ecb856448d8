"""Visual prompts: objects given by points, a box or a mask on a frame, and exemplar boxes.

A video's request (``VideoSpec``) may carry, besides its text prompts:

- ``objects``: each entry prompts one object on one source frame with positive/negative points, a
  box and/or a mask. Entries sharing an ``id`` are the same object refined on several frames (as
  SAM's clicks are); an entry without one is a new object whose id is assigned (``assigned_ids``).
- ``exemplars``: positive or negative boxes on a frame that sharpen a text concept (SAM 3's
  promptable concept segmentation). They need a text prompt: every entry point refuses them
  without one (``exemplars_need_text``), before any compute.

Coordinates are pixels of the displayed frame (after rotation), as ``bbox`` in masks.json; boxes
are ``[x, y, w, h]``; masks are COCO RLE ``{"size": [h, w], "counts": "..."}``.

Checks come in two steps. What an entry says of itself (a label other than 0/1, points and labels
of different lengths, a zero-area box, a malformed mask, an id given twice on one frame) is refused
when the models validate, at every entry point. What needs the video (a frame past its end or before
``start_frame``, a box or point outside the frame, a mask of another size) is ``check_against_video``,
called where the video is probed: the worker's probe task, before any chunk, and ``sam3v segment``
at entry. Errors name the field as ``objects[2].box``.

No torch and no pycocotools here: the control plane (API, manifest) validates these too, and its
image has neither. The RLE check decodes the counts string itself because pycocotools does not
check it (a malformed string decodes to uninitialised memory, or reads past its end).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    AllowInfNan,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from pipeline.core.errors import FieldError

# A coordinate or size in pixels: a finite number (ints welcome; true/false and strings are not).
Pixels = Annotated[StrictFloat, AllowInfNan(False)]
Point = tuple[Pixels, Pixels]  # [x, y]
Box = tuple[Pixels, Pixels, Pixels, Pixels]  # [x, y, w, h]
FrameIndex = Annotated[StrictInt, Field(ge=0, description="Source frame index (0-based).")]
# A side of a mask larger than any video we decode (8K is 7680): a size beyond it is a typo, and
# size[0] * size[1] must stay a sane number before the counts are summed against it.
MAX_MASK_SIDE = 16384


class RleMask(BaseModel):
    """A binary mask as COCO compressed RLE (what masks.json and pycocotools write)."""

    model_config = ConfigDict(extra="forbid")

    size: tuple[StrictInt, StrictInt] = Field(description="[height, width] in pixels.")
    counts: str = Field(description="COCO compressed RLE counts string.")

    @field_validator("size")
    @classmethod
    def _size(cls, value):
        if not all(1 <= side <= MAX_MASK_SIDE for side in value):
            raise ValueError(f"must be [height, width], each 1 to {MAX_MASK_SIDE}")
        return value

    @model_validator(mode="after")
    def _counts_cover_the_mask(self):
        try:
            runs = rle_runs(self.counts)
        except ValueError as err:
            raise_at(("counts",), str(err))
        height, width = self.size
        if sum(runs) != height * width:
            raise_at(("counts",), f"its runs cover {sum(runs)} pixels, not {height}x{width} = {height * width} "
                                  "(an RLE of another size, or not COCO's compressed form)")
        if not sum(runs[1::2]):
            raise_at(("counts",), "the mask is empty (no pixel set)")
        return self


def rle_runs(counts: str) -> list[int]:
    """The run lengths a COCO compressed counts string holds (pycocotools' ``rleFrString``): each
    number is 5-bit groups in characters 48-111, 0x20 continuing, 0x10 the sign of the last group;
    from the fourth on, each is a difference to the run two before. ValueError if malformed."""
    runs: list[int] = []
    value = shift = 0
    for ch in counts:
        c = ord(ch) - 48
        if not 0 <= c < 64:
            raise ValueError(f"{ch!r} is not a character of COCO compressed RLE")
        value |= (c & 0x1F) << shift
        shift += 5
        if c & 0x20:
            continue
        if c & 0x10:
            value |= -1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError(f"run {len(runs)} is negative")
        runs.append(value)
        value = shift = 0
    if shift:
        raise ValueError("ends inside a number")
    if not runs:
        raise ValueError("empty")
    return runs


class ObjectPrompt(BaseModel):
    """One object prompted on one frame: points, a box and/or a mask."""

    model_config = ConfigDict(extra="forbid")

    id: StrictInt | None = Field(None, ge=0, description="Object id of the caller's choosing (0 or more); entries "
                                                         "with the same id refine one object on several frames. "
                                                         "Absent: a new object, id assigned.")
    frame: FrameIndex
    points: list[Point] | None = Field(None, description="Clicks as [x, y] pixels of the displayed frame.")
    labels: list[StrictInt] | None = Field(None, description="1 (include) or 0 (exclude) per point; default all 1.")
    box: Box | None = Field(None, description="[x, y, w, h] pixels of the displayed frame, as bbox in masks.json.")
    mask: RleMask | None = Field(None, description="COCO RLE mask of the displayed frame's size.")

    @field_validator("points")
    @classmethod
    def _points(cls, value):
        if value is not None:
            if not value:
                raise ValueError("empty (leave it out, or give at least one [x, y])")
            for i, (x, y) in enumerate(value):
                if x < 0 or y < 0:
                    raise_at((i,), f"[{x:g}, {y:g}] has a negative coordinate: points are pixels of the frame")
        return value

    @field_validator("labels")
    @classmethod
    def _labels(cls, value):
        for i, label in enumerate(value or []):
            if label not in (0, 1):
                raise_at((i,), f"{label} is not a point label: 1 (include) or 0 (exclude)")
        return value

    @field_validator("box")
    @classmethod
    def _box(cls, value):
        return check_box_shape(value)

    @model_validator(mode="after")
    def _something_given(self):
        if self.points is None and self.box is None and self.mask is None:
            raise_at((), "give points, a box or a mask")
        if self.labels is not None:
            if self.points is None:
                raise_at(("labels",), "given without points")
            if len(self.labels) != len(self.points):
                raise_at(("labels",), f"{len(self.labels)} labels for {len(self.points)} points (one each)")
        return self

    def point_labels(self) -> list[int]:
        """Each point's label: as given, else 1 (include)."""
        return list(self.labels) if self.labels is not None else [1] * len(self.points or [])


class Exemplar(BaseModel):
    """A box around an example (positive) or counter-example (negative) of the text concept."""

    model_config = ConfigDict(extra="forbid")

    frame: FrameIndex
    box: Box = Field(description="[x, y, w, h] pixels of the displayed frame.")
    positive: StrictBool = Field(True, description="true: an example of the concept; false: not one.")

    @field_validator("box")
    @classmethod
    def _box(cls, value):
        return check_box_shape(value)


def check_box_shape(box: tuple[float, float, float, float] | None):
    """What a box says of itself: inside any frame's quadrant and of some area."""
    if box is not None:
        x, y, w, h = box
        if x < 0 or y < 0:
            raise ValueError(f"[{x:g}, {y:g}, {w:g}, {h:g}]: x and y must be 0 or more (pixels of the frame)")
        if w <= 0 or h <= 0:
            raise ValueError(f"[{x:g}, {y:g}, {w:g}, {h:g}]: zero area (w and h must be more than 0)")
    return box


def check_object_ids(objects: list[ObjectPrompt]) -> None:
    """An id given two entries on one frame is an error (which would hold?); on different frames
    the later ones refine the object. Raises a ValidationError at ``[i].id``, for a field validator."""
    seen: dict[tuple[int, int], int] = {}
    for i, obj in enumerate(objects):
        if obj.id is None:
            continue
        if (key := (obj.id, obj.frame)) in seen:
            raise_at((i, "id"), f"object {obj.id} is already given on frame {obj.frame} (objects[{seen[key]}]): "
                                "give its points, box and mask in one entry")
        seen[key] = i


def assigned_ids(objects: list[ObjectPrompt]) -> list[int]:
    """Each entry's object id: its own, else the lowest id no entry uses, in entry order."""
    used = {o.id for o in objects if o.id is not None}
    out, next_free = [], 0
    for obj in objects:
        if obj.id is None:
            while next_free in used:
                next_free += 1
            used.add(next_free)
            out.append(next_free)
        else:
            out.append(obj.id)
    return out


def count_objects(objects: list[ObjectPrompt]) -> int:
    """Distinct objects: one per id, and one per entry without an id."""
    return len({o.id for o in objects if o.id is not None}) + sum(o.id is None for o in objects)


def too_many(prompts: int, objects: list[ObjectPrompt], exemplars: list[Exemplar],
             limit: int) -> tuple[str, str] | None:
    """(field, why) when text prompts plus objects, or exemplars, pass ``limit`` (SAM3V_MAX_PROMPTS):
    each costs model time on every frame. None when they do not."""
    n = count_objects(objects)
    if prompts + n > limit:
        what = f"{n} objects" + (f" and {prompts} text prompt{'s' * (prompts > 1)}" if prompts else "")
        return ("objects" if objects else "prompts"), f"{what}, at most {limit} per video (SAM3V_MAX_PROMPTS)"
    if len(exemplars) > limit:
        return "exemplars", f"{len(exemplars)} exemplars, at most {limit} per video (SAM3V_MAX_PROMPTS)"
    return None


def exemplars_need_text(give: str) -> str:
    """Why exemplars without a text prompt are refused at entry; ``give``: how the entry point takes
    one (``--prompt``). transformers 5.24's ``Sam3VideoModel`` detects text concepts only
    (docs/visual_prompts.md, "Exemplars"): let through, the video would fail after its download
    and probe (``workers.model.tracker.check_prompts``, the last line of defence)."""
    return (f"an exemplar sharpens a text prompt on its frame; give {give} too: a concept given by boxes "
            "alone is not supported (transformers' Sam3VideoModel detects text concepts only)")


def check_against_video(spec: Any, width: int, height: int, frame_count: int) -> None:
    """Refuse (``FieldError``, an InputError naming the field) a visual prompt the video cannot
    hold: a frame past its end, past ``start_frame + max_frames`` or before ``start_frame``; a box
    or point outside the ``width`` x ``height`` displayed frame; a mask of another size.
    ``frame_count``: the source's frames. ``spec``: a VideoSpec (any object with its fields)."""
    first = spec.start_frame
    end = frame_count if spec.max_frames is None else min(frame_count, first + spec.max_frames)
    for i, obj in enumerate(spec.objects):
        _check_frame(("objects", i, "frame"), obj.frame, first, end, frame_count, spec.max_frames)
        for j, (x, y) in enumerate(obj.points or []):
            if x > width or y > height:
                raise FieldError(("objects", i, "points", j),
                                 f"[{x:g}, {y:g}] is outside the {width}x{height} frame")
        if obj.box is not None:
            _check_box(("objects", i, "box"), obj.box, width, height)
        if obj.mask is not None and list(obj.mask.size) != [height, width]:
            raise FieldError(("objects", i, "mask"), f"size [{obj.mask.size[0]}, {obj.mask.size[1]}] ([height, width]) "
                                                     f"but the video's frames are {width}x{height}: [{height}, {width}]")
    for i, ex in enumerate(spec.exemplars):
        _check_frame(("exemplars", i, "frame"), ex.frame, first, end, frame_count, spec.max_frames)
        _check_box(("exemplars", i, "box"), ex.box, width, height)


def _check_frame(where: tuple, frame: int, first: int, end: int, frame_count: int, max_frames: int | None) -> None:
    if frame >= frame_count:
        raise FieldError(where, f"frame {frame} is past the end of the video: it has {frame_count} frames "
                                f"(0 to {frame_count - 1})")
    if frame < first:
        raise FieldError(where, f"frame {frame} is before start_frame {first}: only frames {first} on are processed")
    if frame >= end:
        raise FieldError(where, f"frame {frame} is past the last frame processed, {end - 1} "
                                f"(start_frame {first} + max_frames {max_frames})")


def _check_box(where: tuple, box: tuple[float, float, float, float], width: int, height: int) -> None:
    x, y, w, h = box
    if x + w > width or y + h > height:
        raise FieldError(where, f"[{x:g}, {y:g}, {w:g}, {h:g}] reaches outside the {width}x{height} frame "
                                f"(to {x + w:g}, {y + h:g})")


def raise_at(where: tuple, reason: str) -> None:
    """Fail a pydantic validator at ``where`` (relative to the value it checks): a plain ValueError
    can only name the field or model the validator is on, not an entry inside it."""
    raise ValidationError.from_exception_data(
        "visual prompt", [InitErrorDetails(type=PydanticCustomError("value_error", "{reason}", {"reason": reason}),
                                           loc=where, input=None)])
