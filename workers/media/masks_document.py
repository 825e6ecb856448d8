"""``masks.json``: per-frame COCO RLE masks, boxes and scores, plus what produced them.

Chunks each record their frames in a ``FrameLog``; ``build_document`` joins the logs into one
document, so a chunked run's masks.json is byte-identical to an unchunked run's. The format is
documented in the README ("masks.json"); bump SCHEMA_VERSION on any change a reader would notice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from workers.media import rle
from workers.media.frame_objects import FrameObjects

# 2 (#22): an object's "prompt" may be how it was prompted visually, an object or a list of them,
# not only the text that found it. Readers take 1 and 2 alike (prompt_name).
SCHEMA_VERSION = 2
# What the exports and the job's counts call an object prompted visually: its description (frame,
# box, points, mask) is not a name, nor a key.
VISUAL_PROMPTS = "visual prompts"


@dataclass
class FrameLog:
    """Frame entries in masks.json's shape, and the prompt each object id was found by."""

    frames: list[dict] = field(default_factory=list)
    object_prompts: dict[int, str] = field(default_factory=dict)

    def add(self, pts: float, found: FrameObjects) -> dict:
        entries = []
        for obj_id, score, prompt, mask in zip(found.object_ids, found.scores, found.prompts, found.masks):
            seg = rle.encode(mask)
            entries.append({"id": obj_id, "score": round(score, 6), "bbox": rle.bbox(seg), "segmentation": seg})
            self.object_prompts.setdefault(obj_id, prompt)
        entry = {"frame": found.frame_idx, "pts": round(pts, 6), "objects": entries}
        self.frames.append(entry)
        return entry

    def to_json(self) -> bytes:
        return json.dumps({"frames": self.frames, "object_prompts": {str(k): v for k, v in self.object_prompts.items()}},
                          separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> FrameLog:
        raw = json.loads(data)
        return cls(raw["frames"], {int(k): v for k, v in raw["object_prompts"].items()})


def prompt_name(prompt: str | dict | list) -> str:
    """The name of an ``objects[].prompt``: the text prompt, or VISUAL_PROMPTS for a visual one."""
    return prompt if isinstance(prompt, str) else VISUAL_PROMPTS


def _objects(frames: list[dict], prompts: dict[int, str]) -> list[dict]:
    spans: dict[int, list[int]] = {}
    for entry in frames:
        for obj in entry["objects"]:
            span = spans.setdefault(obj["id"], [entry["frame"], entry["frame"]])
            span[1] = entry["frame"]
    return [{"id": i, "prompt": prompts[i], "first_frame": a, "last_frame": b} for i, (a, b) in sorted(spans.items())]


def build_document(model: dict, params: dict, video: dict, prompts: list[str], logs: list[FrameLog],
                   start_frame: int = 0) -> dict:
    """Frames keep their source indices and times: a run from ``start_frame`` lists frames
    start_frame, start_frame + 1, ..., so a user maps every entry back to the original video."""
    frames = [entry for log in logs for entry in log.frames]
    numbers = [entry["frame"] for entry in frames]
    if numbers != list(range(start_frame, start_frame + len(numbers))):
        raise ValueError(f"frame logs are not contiguous from frame {start_frame}: a chunk's frames are missing "
                         "or repeated")
    object_prompts: dict[int, str] = {}
    for log in logs:
        object_prompts.update(log.object_prompts)
    return {
        "schema_version": SCHEMA_VERSION,
        "model": model,
        "params": params,
        "video": {**video, "num_frames": len(frames)},
        "prompts": prompts,
        "objects": _objects(frames, object_prompts),
        "frames": frames,
    }


def document_json(document: dict) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()
