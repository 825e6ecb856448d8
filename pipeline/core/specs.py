"""What one video's request is: its source, prompts and options, validated here and only here.

The CLI (``sam3v segment``), the manifest parser and the HTTP API all build these models; the
workers read them back from the job's record. A field's error names the field
(``max_frames: must be at least 1``); entry points translate the name to their own spelling
(``--max-frames``).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from pipeline.core.errors import InputError, field_path
from pipeline.core.visual_prompts import Exemplar, ObjectPrompt, check_object_ids, exemplars_need_text, raise_at

# The output videos, in the order they are rendered and listed.
VIDEO_OUTPUTS = ("overlay", "mask")
# masks.json in the formats other tools read, made from it by the finalize step (or later by
# `sam3v export`): COCO, YouTube-VIS, DAVIS PNGs, MOTChallenge rows, one mask video per object.
EXPORT_NAMES = ("coco", "ytvis", "davis", "mot", "objects")
# Every output a request may ask for; masks.json ("rle") is always written.
OUTPUT_NAMES = (*VIDEO_OUTPUTS, "rle", *EXPORT_NAMES)
# How the overlay draws each object: a translucent fill (today's look), an opaque outline along its
# edge, or both.
OVERLAY_STYLES = ("fill", "outline", "both")
# Prompts one video may have unless SAM3V_MAX_PROMPTS says otherwise: each one costs model time and
# memory on every frame, so an unbounded list would tie up a worker for hours.
DEFAULT_MAX_PROMPTS = 16
# The per-video options a manifest line may set, besides its id, video and prompts.
OPTION_FIELDS = ("apply_mask", "outputs", "max_frames", "chunk_frames", "mask_opacity", "start_frame",
                 "detection_threshold", "overlay_style", "labels")


class VideoOptions(BaseModel):
    """How to segment and render one video."""

    model_config = ConfigDict(validate_assignment=True)

    apply_mask: bool = True
    outputs: list[str] | None = None  # None: the one apply_mask picks
    max_frames: int | None = None  # counted from start_frame
    chunk_frames: int | None = None  # None: the pipeline's default (one chunk for `sam3v segment`)
    mask_opacity: float = 0.5
    start_frame: int = 0  # first source frame processed; outputs cover [start_frame, ...) only
    detection_threshold: float | None = None  # None: the model's own (0.5 for SAM 3)
    overlay_style: str = "fill"  # OVERLAY_STYLES
    labels: bool = False  # the object's id and prompt beside it on the overlay, in its colour

    @field_validator("max_frames", "chunk_frames")
    @classmethod
    def _positive(cls, value):
        if value is not None and value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("start_frame", "detection_threshold", mode="before")
    @classmethod
    def _not_a_flag(cls, value):
        # pydantic would read true as 1: a frame index or a threshold given as a flag is a mistake.
        if isinstance(value, bool):
            raise ValueError("must be a number, not true or false")
        return value

    @field_validator("start_frame")
    @classmethod
    def _frame_index(cls, value):
        if value < 0:
            raise ValueError("must be a frame index, 0 or more")
        return value

    @field_validator("mask_opacity", "detection_threshold")
    @classmethod
    def _unit(cls, value):
        # `not 0 <= v <= 1` also refuses NaN.
        if value is not None and not 0.0 <= value <= 1.0:
            raise ValueError("must be between 0 and 1")
        return value

    @field_validator("overlay_style")
    @classmethod
    def _overlay_style(cls, value):
        if value not in OVERLAY_STYLES:
            raise ValueError(f"unknown overlay style {value!r} (choose from {', '.join(OVERLAY_STYLES)})")
        return value

    @field_validator("labels", mode="before")
    @classmethod
    def _flag(cls, value):
        # pydantic would read "no" or 0 as false: a manifest's labels is true or false, nothing else.
        if not isinstance(value, bool):
            raise ValueError("must be true or false")
        return value

    @field_validator("outputs")
    @classmethod
    def _outputs(cls, value):
        if value is not None:
            bad = [o for o in value if o not in OUTPUT_NAMES]
            if bad or not value:
                raise ValueError(f"unknown output {bad[0]!r} (choose from {', '.join(OUTPUT_NAMES)})" if bad
                                 else "empty")
        return value

    def video_outputs(self) -> list[str]:
        """The output videos to render, in render order."""
        wanted = self.outputs or (("overlay",) if self.apply_mask else ("mask",))
        return [o for o in VIDEO_OUTPUTS if o in wanted]

    def exports(self) -> list[str]:
        """The exports to write beside masks.json, in EXPORT_NAMES order."""
        return [o for o in EXPORT_NAMES if o in (self.outputs or ())]


class VideoSpec(VideoOptions):
    """One video of a job: a manifest line, an API generation or a `sam3v segment` call."""

    id: str
    video: str  # where to read it: s3://, http(s)://, a storage: key or (embedded) a local path
    prompts: list[str] = []  # text concepts; may be empty when objects are given
    objects: list[ObjectPrompt] = []  # objects prompted visually (pipeline.core.visual_prompts)
    exemplars: list[Exemplar] = []  # boxes that sharpen the text concepts: they need one
    line: int = 0  # the manifest line it came from (1-based; 0: not from a manifest)

    @field_validator("objects")
    @classmethod
    def _one_entry_per_object_and_frame(cls, value):
        check_object_ids(value)
        return value

    @model_validator(mode="after")
    def _something_to_find(self):
        if self.exemplars and not self.prompts:
            raise_at(("exemplars",), exemplars_need_text("prompt (or the job's --prompt)"))
        if not (self.prompts or self.objects):
            raise_at(("prompts",), "give a text prompt or an object (points, a box or a mask)")
        return self

    def has_visual_prompts(self) -> bool:
        return bool(self.objects or self.exemplars)


def too_many_prompts(count: int, limit: int) -> str | None:
    """Why ``count`` prompts are refused under ``limit`` (SAM3V_MAX_PROMPTS); None when they are not.
    Entry points put their own field name in front (``prompts: ...``, ``--prompt: ...``)."""
    if count <= limit:
        return None
    return f"{count} prompts, at most {limit} per video (SAM3V_MAX_PROMPTS)"


def first_error(err: ValidationError) -> tuple[str, str]:
    """(field, message) of a validation error's first problem."""
    first = err.errors()[0]
    return field_path(first["loc"]), first["msg"].removeprefix("Value error, ")


def options_from_flags(**flags) -> VideoOptions:
    """VideoOptions from command-line flags; an error names the flag (``--max-frames 0: ...``)."""
    try:
        return VideoOptions(**flags)
    except ValidationError as err:
        field, message = first_error(err)
        flag = f"--{field.replace('_', '-')}"
        shown = flag if isinstance(flags.get(field), list | tuple) else f"{flag} {flags.get(field)}"
        raise InputError(f"{shown}: {message}") from None
