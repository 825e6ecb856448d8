"""The output stage: each finished frame becomes RLE entries and composited video frames.

It runs in its own thread so compositing and feeding ffmpeg overlap with the model.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from workers.composite import mask_frame, overlay
from workers.encode import EncoderSettings, FrameEncoder
from workers.masks_document import MasksDocument
from workers.tracker import FrameObjects

VIDEO_OUTPUTS = ("overlay", "mask")
_STOP = object()


@dataclass(frozen=True)
class RenderSpec:
    width: int
    height: int
    fps_rational: str
    no_bframes: bool
    opacity: float
    encoder: EncoderSettings


class RenderStage:
    """Feed ``(frame, objects)`` with ``submit``; ``finish`` waits and closes the encoders."""

    def __init__(self, workdir: Path, videos: list[str], spec: RenderSpec, document: MasksDocument,
                 max_queue: int = 8):
        self.spec = spec
        self.document = document
        self.encoders = {
            name: FrameEncoder(workdir / f"{name}.video.mp4", spec.width, spec.height, spec.fps_rational,
                               spec.encoder, no_bframes=spec.no_bframes,
                               pix_fmt="rgb24" if name == "overlay" else "gray")
            for name in videos
        }
        self.busy_seconds = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="render", daemon=True)
        self._thread.start()

    def submit(self, frame, found: FrameObjects) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put((frame, found), timeout=0.5)
                return
            except queue.Full:
                continue

    def _render(self, frame, found: FrameObjects) -> None:
        bboxes = self.document.add_frame(frame.pts, found)
        for name, encoder in self.encoders.items():
            if name == "overlay":
                encoder.write(overlay(frame.rgb, found.object_ids, found.masks, self.spec.opacity, bboxes))
            else:
                encoder.write(mask_frame(found.masks, self.spec.height, self.spec.width))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._error is not None:
                continue  # drain so the producer never blocks on a dead stage
            start = time.perf_counter()
            try:
                self._render(*item)
            except BaseException as err:  # re-raised in the producer's thread
                self._error = err
            self.busy_seconds += time.perf_counter() - start

    def finish(self) -> dict[str, Path]:
        self._queue.put(_STOP)
        self._thread.join()
        if self._error is not None:
            self.abort()
            raise self._error
        start = time.perf_counter()
        for encoder in self.encoders.values():
            encoder.close()
        self.busy_seconds += time.perf_counter() - start
        return {name: enc.path for name, enc in self.encoders.items()}

    def abort(self) -> None:
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(_STOP)
            self._thread.join()
        for encoder in self.encoders.values():
            encoder.abort()
