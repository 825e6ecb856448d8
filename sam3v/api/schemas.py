"""Request bodies. ``model``, ``input_video``, ``prompt`` and ``apply_mask`` are exactly the hosted
model's parameters; everything else is an optional, additive extra. ``prompt`` is required, as
there, unless the request prompts objects visually (``objects``); ``exemplars`` sharpen ``prompt``
and need it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.core.specs import OUTPUT_NAMES, OVERLAY_STYLES
from pipeline.core.uris import REMOTE, Scheme, parse_uri
from pipeline.core.visual_prompts import Exemplar, ObjectPrompt, check_object_ids, exemplars_need_text, raise_at

MODEL_ID = "sam-3-video"


# Far above any real URL, far below what would bloat a generation's record (both are stored in Redis
# and sent to workers; the webhook's is read on every delivery).
MAX_URL_LENGTH = 4096


class GenerationRequest(BaseModel):
    # The schema says what _something_to_find checks: prompt or objects; and prompt whenever
    # exemplars has an entry (an empty list or null asks nothing).
    model_config = ConfigDict(extra="forbid", json_schema_extra={
        "anyOf": [{"required": ["prompt"]}, {"required": ["objects"]}],
        "if": {"required": ["exemplars"], "properties": {"exemplars": {"type": "array", "minItems": 1}}},
        "then": {"required": ["prompt"]}})

    model: str = Field(MODEL_ID, description="Model id: sam-3-video.")
    input_video: str = Field(..., max_length=MAX_URL_LENGTH, json_schema_extra={"format": "uri"},
                             description="Video to use as reference: an http(s):// URL, s3://bucket/key (buckets "
                                         "the server allows: SAM3V_API_S3_BUCKETS) or upload://<id> from POST "
                                         "/api/ai/uploads. Format: uri.",
                             examples=["https://example.com/winter_summer_ox.mp4"])
    prompt: str | None = Field(None, description="Text description of what you want to segment out of the video. "
                                                 "Required unless objects are given (exemplars need it).",
                               examples=["the ox horns"])
    apply_mask: bool = Field(True, description="Apply the mask on the image: result_url is the overlay video "
                                               "(true) or the white-on-black mask video (false).")
    num_generations: int = Field(1, ge=1, le=4, description="How many generations to queue (1-4).")
    # --- extras -----------------------------------------------------------------------------
    prompts: list[str] | None = Field(None, description="Extra concepts, segmented together with prompt.")
    start_frame: int = Field(0, ge=0, description="First frame to process (0-based); outputs start there, "
                                                  "masks.json keeps the source's frame numbers.")
    max_frames: int | None = Field(None, ge=1, description="Process at most this many frames (from start_frame).")
    detection_threshold: float | None = Field(
        None, ge=0.0, le=1.0, description="Keep detections scoring at least this (default: the model's, 0.5); "
                                          "a new object needs 0.2 more.")
    chunk_frames: int | None = Field(None, ge=1, description="Frames per chunk (tracker memory is carried across).")
    outputs: list[Literal[OUTPUT_NAMES]] | None = Field(
        None, min_length=1, description="Outputs to write; default: the one apply_mask picks. masks.json is always written.")
    mask_opacity: float = Field(0.5, ge=0.0, le=1.0, description="Overlay opacity, 0-1.")
    overlay_style: Literal[OVERLAY_STYLES] = Field(
        "fill", description="How the overlay draws each object: fill (translucent, the default), outline or both.")
    labels: bool = Field(False, description="Write each object's id and prompt beside it on the overlay, in its colour.")
    webhook_url: str | None = Field(None, max_length=MAX_URL_LENGTH, json_schema_extra={"format": "uri"},
                                    description="http(s) URL that gets a signed POST when the generation ends "
                                                "(same address rules as input_video).")
    objects: list[ObjectPrompt] | None = Field(
        None, description="Objects to track, each given on a source frame by points (with labels 1 include / 0 "
                          "exclude), a box [x, y, w, h] and/or a COCO RLE mask, in pixels of the displayed frame. "
                          "Entries with the same id refine one object on several frames.",
        examples=[[{"id": 1, "frame": 0, "box": [120, 40, 200, 180]}]])
    exemplars: list[Exemplar] | None = Field(
        None, description="Boxes [x, y, w, h] on a source frame around examples (positive) or counter-examples "
                          "(positive: false) of the text concept: they sharpen prompt on their frame and need "
                          "it (a concept given by boxes alone is not supported).",
        examples=[[{"frame": 0, "box": [120, 40, 200, 180], "positive": True}]])

    @field_validator("input_video")
    @classmethod
    def _uri(cls, value: str) -> str:
        """The normal form (``S3://`` is ``s3://``): the bucket allow-list and the workers see the
        scheme the way ``parse_uri`` reads it."""
        uri = parse_uri(value)  # BadUri is a ValueError: a 422 naming input_video
        if uri.scheme not in (*REMOTE, Scheme.UPLOAD):
            raise ValueError("must be an http://, https://, s3:// or upload:// URI (local paths are not accepted)")
        return uri.text

    @field_validator("webhook_url")
    @classmethod
    def _webhook(cls, value: str | None) -> str | None:
        if value is None:
            return None
        uri = parse_uri(value)
        if uri.scheme not in (Scheme.HTTP, Scheme.HTTPS):
            raise ValueError("must be an http:// or https:// URL with a host")
        return uri.text

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | None) -> str | None:
        if value is not None and not value.strip():
            raise ValueError("must not be empty")
        return value.strip() if value is not None else None

    @field_validator("objects")
    @classmethod
    def _objects(cls, value):
        check_object_ids(value or [])
        return value

    @model_validator(mode="after")
    def _something_to_find(self):
        # The hosted API requires prompt; it stays required for a request that prompts only by text,
        # and for exemplars, which sharpen it.
        if self.exemplars and self.prompt is None:
            raise_at(("exemplars",), exemplars_need_text("prompt"))
        if self.prompt is None and not self.objects:
            raise_at(("prompt",), "Field required (or give objects)")
        return self

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, value):
        if value is not None and any(not p.strip() for p in value):
            raise ValueError("must not contain empty prompts")
        return [p.strip() for p in value] if value is not None else None

    def all_prompts(self) -> list[str]:
        """prompt, then the extras not seen before. Linear: the count is checked only after this
        (SAM3V_MAX_PROMPTS, in the manifest line), and a 1 MB body holds 100,000 prompts."""
        return list(dict.fromkeys(p for p in (self.prompt, *(self.prompts or [])) if p is not None))

    def manifest_line(self, video: str | None = None) -> dict:
        """The pipeline's manifest line; ``video``: where workers read input_video (an upload's location)."""
        line = {"id": "video", "video": video or self.input_video, "prompts": self.all_prompts(),
                "apply_mask": self.apply_mask, "mask_opacity": self.mask_opacity}
        if self.start_frame:
            line["start_frame"] = self.start_frame
        if self.overlay_style != "fill":
            line["overlay_style"] = self.overlay_style
        if self.labels:
            line["labels"] = True
        for key in ("outputs", "max_frames", "chunk_frames", "detection_threshold"):
            if getattr(self, key) is not None:
                line[key] = getattr(self, key)
        for key in ("objects", "exemplars"):
            if getattr(self, key):
                line[key] = [entry.model_dump(exclude_none=True) for entry in getattr(self, key)]
        return line


class GenerateRequest(GenerationRequest):
    response_format: Literal["url", "b64_json"] = Field(
        "url", description="Sync only: url (default) or b64_json (the result video inline, base64).")


def request_schema() -> dict:
    schema = GenerationRequest.model_json_schema()
    schema["title"] = "sam-3-video request"
    return schema
