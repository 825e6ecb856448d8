"""Build ``masks.json``: per-frame COCO RLE masks, boxes and scores, plus what produced them.

The format is documented in the README ("masks.json"); bump SCHEMA_VERSION on any change a
reader would notice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from workers import rle
from workers.tracker import FrameObjects

SCHEMA_VERSION = 1


@dataclass
class _ObjectSpan:
    prompt: str
    first_frame: int
    last_frame: int


@dataclass
class MasksDocument:
    model: dict
    params: dict
    video: dict
    prompts: list[str]
    frames: list[dict] = field(default_factory=list)
    _objects: dict[int, _ObjectSpan] = field(default_factory=dict)

    def add_frame(self, pts: float, found: FrameObjects) -> list[list[float]]:
        """Record one frame; returns each object's [x, y, w, h] box (the compositor reuses them)."""
        entries = []
        for obj_id, score, prompt, mask in zip(found.object_ids, found.scores, found.prompts, found.masks):
            seg = rle.encode(mask)
            entries.append({"id": obj_id, "score": round(score, 6), "bbox": rle.bbox(seg), "segmentation": seg})
            span = self._objects.get(obj_id)
            if span is None:
                self._objects[obj_id] = _ObjectSpan(prompt, found.frame_idx, found.frame_idx)
            else:
                span.last_frame = found.frame_idx
        self.frames.append({"frame": found.frame_idx, "pts": round(pts, 6), "objects": entries})
        return [e["bbox"] for e in entries]

    def to_dict(self) -> dict:
        objects = [
            {"id": obj_id, "prompt": s.prompt, "first_frame": s.first_frame, "last_frame": s.last_frame}
            for obj_id, s in sorted(self._objects.items())
        ]
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "params": self.params,
            "video": {**self.video, "num_frames": len(self.frames)},
            "prompts": self.prompts,
            "objects": objects,
            "frames": self.frames,
        }

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), separators=(",", ":")).encode()
