"""`sam3v segment`'s visual prompt flags: --point, --box, --mask and --exemplar, read into the spec's
``objects`` and ``exemplars`` (pipeline.core.visual_prompts), and the spec's errors said back in
terms of the flag value that caused them.

Flags that share a FRAME and an @ID (or both have none) make one object entry: a box and a
negative click on it, several clicks. A second box or mask for the same entry is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from pipeline.core.errors import FieldError, InputError
from pipeline.core.visual_prompts import Exemplar, ObjectPrompt

POINT_FORM = "FRAME:X,Y[:LABEL][@ID]"
BOX_FORM = "FRAME:X,Y,W,H[@ID]"
MASK_FORM = "FRAME:FILE[@ID]"
EXEMPLAR_FORM = "FRAME:X,Y,W,H[:neg]"
_ID_SUFFIX = re.compile(r"(.*)@(\d+)", re.DOTALL)
_FRAME = re.compile(r"\d+")


@dataclass
class _Entry:
    """One object entry being built, and the flag values it came from (for messages)."""

    frame: int
    id: int | None
    points: list[tuple[float, float]] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    point_flags: list[str] = field(default_factory=list)
    box: tuple[float, ...] | None = None
    box_flag: str | None = None
    mask: dict | None = None
    mask_flag: str | None = None

    def flags(self) -> list[str]:
        return [*self.point_flags, *filter(None, (self.box_flag, self.mask_flag))]


@dataclass
class VisualFlags:
    """The flags read: the spec's entries, and where each came from."""

    objects: list[ObjectPrompt]
    exemplars: list[Exemplar]
    entries_read: list[_Entry]  # one per object entry, in the order of objects
    exemplar_flags: list[str]

    def __bool__(self) -> bool:
        return bool(self.objects or self.exemplars)

    def flag_error(self, err: FieldError) -> InputError:
        """``err`` (a spec field's error, e.g. from check_against_video) as the flag value behind it."""
        return InputError(f"{self.flag_for(err.where)}: {err.reason}")

    def flag_for(self, where: tuple) -> str:
        """The flag value a spec field came from: ("objects", 1, "points", 2) -> "--point 40:1,2"."""
        kind, index, rest = where[0], (where[1] if len(where) > 1 else None), where[2:]
        if index is None:
            return "--exemplar" if kind == "exemplars" else "--point/--box/--mask"
        if kind == "exemplars":
            return self.exemplar_flags[index]
        entry = self.entries_read[index]
        part = rest[0] if rest else None
        if part in ("points", "labels") and entry.point_flags:
            j = rest[1] if len(rest) > 1 and isinstance(rest[1], int) else 0
            return entry.point_flags[j]
        return {"box": entry.box_flag, "mask": entry.mask_flag}.get(part) or " ".join(entry.flags())


def _split_id(flag: str, value: str, form: str) -> tuple[str, int | None]:
    if "@" not in value:
        return value, None
    if not (m := _ID_SUFFIX.fullmatch(value)):
        raise InputError(f"{flag} {value}: @ID must be a whole number, 0 or more (expected {form})")
    return m.group(1), int(m.group(2))


def _frame(flag: str, value: str, text: str, form: str) -> int:
    if not _FRAME.fullmatch(text.strip()):
        raise InputError(f"{flag} {value}: FRAME {text!r} is not a frame index, 0 or more (expected {form})")
    return int(text)


def _numbers(flag: str, value: str, text: str, count: int, form: str) -> tuple[float, ...]:
    parts = text.split(",")
    try:
        numbers = tuple(float(p) for p in parts)
    except ValueError:
        numbers = ()
    if len(numbers) != count:
        what = "X,Y" if count == 2 else "X,Y,W,H"
        raise InputError(f"{flag} {value}: {text!r} is not {what} ({count} numbers; expected {form})")
    return numbers


def _entry(entries: dict[tuple[int, int | None], _Entry], frame: int, obj_id: int | None) -> _Entry:
    return entries.setdefault((frame, obj_id), _Entry(frame, obj_id))


def _read_point(entries: dict, value: str) -> None:
    flag, shown = "--point", f"--point {value}"
    body, obj_id = _split_id(flag, value, POINT_FORM)
    parts = body.split(":")
    if len(parts) not in (2, 3):
        raise InputError(f"{shown}: expected {POINT_FORM}, e.g. 40:320,200 or 40:320,200:0@1")
    frame = _frame(flag, value, parts[0], POINT_FORM)
    x, y = _numbers(flag, value, parts[1], 2, POINT_FORM)
    label = 1
    if len(parts) == 3:
        if not re.fullmatch(r"-?\d+", parts[2].strip()):
            raise InputError(f"{shown}: LABEL {parts[2]!r} is not 1 (include) or 0 (exclude)")
        label = int(parts[2])
    entry = _entry(entries, frame, obj_id)
    entry.points.append((x, y))
    entry.labels.append(label)
    entry.point_flags.append(shown)


def _read_box(entries: dict, value: str) -> None:
    flag, shown = "--box", f"--box {value}"
    body, obj_id = _split_id(flag, value, BOX_FORM)
    frame_text, sep, numbers = body.partition(":")
    if not sep:
        raise InputError(f"{shown}: expected {BOX_FORM}, e.g. 0:120,40,200,180")
    frame = _frame(flag, value, frame_text, BOX_FORM)
    box = _numbers(flag, value, numbers, 4, BOX_FORM)
    entry = _entry(entries, frame, obj_id)
    if entry.box_flag is not None:
        raise InputError(f"{shown}: {entry.box_flag} already gives this object's box on frame {frame}: "
                         "one box per object and frame (give each object its own @ID)")
    entry.box, entry.box_flag = box, shown


def _read_mask(entries: dict, value: str) -> None:
    flag, shown = "--mask", f"--mask {value}"
    body, obj_id = _split_id(flag, value, MASK_FORM)
    frame_text, sep, path = body.partition(":")
    if not sep or not path:
        raise InputError(f"{shown}: expected {MASK_FORM}, e.g. 0:dog.png")
    frame = _frame(flag, value, frame_text, MASK_FORM)
    entry = _entry(entries, frame, obj_id)
    if entry.mask_flag is not None:
        raise InputError(f"{shown}: {entry.mask_flag} already gives this object's mask on frame {frame}: "
                         "one mask per object and frame (give each object its own @ID)")
    try:
        entry.mask = mask_from_png(Path(path))
    except InputError as err:
        raise InputError(f"{shown}: {err}") from None
    entry.mask_flag = shown


def _read_exemplar(value: str) -> tuple[dict, str]:
    shown = f"--exemplar {value}"
    parts = value.split(":")
    if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2].strip().lower() not in ("neg", "pos")):
        raise InputError(f"{shown}: expected {EXEMPLAR_FORM}, e.g. 0:120,40,200,180 or 0:10,10,50,50:neg")
    frame = _frame("--exemplar", value, parts[0], EXEMPLAR_FORM)
    box = _numbers("--exemplar", value, parts[1], 4, EXEMPLAR_FORM)
    positive = len(parts) == 2 or parts[2].strip().lower() == "pos"
    return {"frame": frame, "box": box, "positive": positive}, shown


def mask_from_png(path: Path) -> dict:
    """A PNG (any non-black pixel is the object) as COCO RLE {"size": [h, w], "counts": str}."""
    import numpy as np
    from PIL import Image, UnidentifiedImageError

    from workers.media.rle import encode

    if not path.is_file():
        raise InputError(f"no such file: {path}")
    try:
        with Image.open(path) as image:
            if image.format != "PNG":
                raise InputError(f"{path} is {image.format or 'not an image'}, not a PNG")
            pixels = np.asarray(image.convert("L"))
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{path} is not a readable PNG ({err})") from None
    return encode(pixels > 0)


def _validated(model, data: dict, where: tuple, flags: VisualFlags):
    """``model(**data)``, the spec's entry at ``where``; its error said as the flag value behind it."""
    try:
        return model(**data)
    except ValidationError as err:
        first = err.errors()[0]
        raise flags.flag_error(FieldError((*where, *first["loc"]), first["msg"].removeprefix("Value error, "))) from None


def read_visual_flags(points: list[str], boxes: list[str], masks: list[str], exemplars: list[str]) -> VisualFlags:
    """The spec's objects and exemplars from the flags; InputError (exit 2) naming the flag value."""
    entries: dict[tuple[int, int | None], _Entry] = {}
    for value in points:
        _read_point(entries, value)
    for value in boxes:
        _read_box(entries, value)
    for value in masks:
        _read_mask(entries, value)
    read = [_read_exemplar(v) for v in exemplars]
    flags = VisualFlags([], [], list(entries.values()), [shown for _, shown in read])
    for i, e in enumerate(flags.entries_read):
        data = {"id": e.id, "frame": e.frame, "points": e.points or None, "labels": e.labels or None,
                "box": e.box, "mask": e.mask}
        flags.objects.append(_validated(ObjectPrompt, data, ("objects", i), flags))
    for i, (data, _) in enumerate(read):
        flags.exemplars.append(_validated(Exemplar, data, ("exemplars", i), flags))
    return flags
