"""The output stage: finished frames become RLE entries and composited, encoded video parts.

It runs in its own thread so compositing and feeding ffmpeg overlap with the model. Video is
written as parts on a fixed grid of frames (``pipeline.core.planning.PART_FRAMES``), one encoder
run per part, so where a video is cut into chunks never changes the encoded bytes.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from workers.media import rle
from workers.media.composite import FILL, OverlayStyle, mask_frame, overlay, overlay_yuv
from workers.media.decode import Frame
from workers.media.encode import EncoderSettings, FrameEncoder
from workers.media.frame_objects import FrameObjects
from workers.media.masks_document import FrameLog

_STOP = object()

Publish = Callable[[str, int, Path], None]  # (output name, part number, finished file)


@dataclass(frozen=True)
class RenderSpec:
    width: int
    height: int
    fps_rational: str
    opacity: float
    encoder: EncoderSettings
    part_frames: int
    encode_limit: int  # frames below this index are encoded here; the last part ends there
    yuv: bool = False  # draw the overlay on the decoder's yuv420p planes (decode.yuv_capable)
    start_frame: int = 0  # the first processed frame: the part grid counts from it
    style: OverlayStyle = FILL  # outline and labels are drawn on RGB only: yuv must be False then

    def part_of(self, index: int) -> int:
        return (index - self.start_frame) // self.part_frames

    def part_start(self, part: int) -> int:
        return self.start_frame + part * self.part_frames


class _PartWriter:
    """One output (overlay or mask): opens an encoder per grid part, publishes it when complete."""

    def __init__(self, name: str, spec: RenderSpec, workdir: Path, publish: Publish):
        self.name, self.spec, self.workdir, self.publish = name, spec, workdir, publish
        self.encoder: FrameEncoder | None = None
        self.part = -1
        self.last_index = -1
        self.codec = "none"
        self._closing: list[threading.Thread] = []
        self._close_errors: list[BaseException] = []

    def write(self, index: int, image: np.ndarray) -> None:
        part = self.spec.part_of(index)
        if self.encoder is None:
            if index != self.spec.part_start(part):
                raise RuntimeError(f"{self.name}: part {part} must start at its first frame, not {index}")
            self.part = part
            self.encoder = FrameEncoder(
                self.workdir / f"{self.name}-{part:06d}.mp4", self.spec.width, self.spec.height,
                self.spec.fps_rational, self.spec.encoder,
                # No B-frames: packets stay in display order, so VFR timestamps map one to one.
                no_bframes=True, pix_fmt=self._pix_fmt(),
            )
            self.codec = self.encoder.codec
        self.encoder.write(image)
        self.last_index = index
        self.close_if_complete()

    def _pix_fmt(self) -> str:
        if self.name != "overlay":
            return "gray"
        return "yuv420p" if self.spec.yuv else "rgb24"

    def close_if_complete(self) -> None:
        if self.encoder is None:
            return
        end = min(self.spec.part_start(self.part + 1), self.spec.encode_limit)
        if self.last_index + 1 == end:
            # ffmpeg still has to drain its lookahead: let it finish while the next part starts.
            closer = threading.Thread(target=self._close, args=(self.encoder, self.part), daemon=True)
            closer.start()
            self._closing.append(closer)
            self.encoder = None

    def _close(self, encoder: FrameEncoder, part: int) -> None:
        try:
            encoder.close()
            self.publish(self.name, part, encoder.path)
        except BaseException as err:  # reported by wait()
            self._close_errors.append(err)
        finally:
            encoder.path.unlink(missing_ok=True)

    def wait(self) -> None:
        for closer in self._closing:
            closer.join()
        self._closing.clear()
        if self._close_errors:
            raise self._close_errors[0]

    def abort(self) -> None:
        if self.encoder is not None:
            self.encoder.abort()
            self.encoder = None
        for closer in self._closing:
            closer.join()

    def check_closed(self) -> None:
        if self.encoder is not None:
            raise RuntimeError(f"{self.name}: part {self.part} was left incomplete")


class RenderStage:
    """Record frames (``submit``) and draw replayed ones (``replay``); ``finish`` waits for all."""

    def __init__(self, workdir: Path, videos: list[str], spec: RenderSpec, log: FrameLog, publish: Publish,
                 max_queue: int = 8, known_prompts: dict[int, str] | None = None):
        if spec.yuv and not spec.style.plain:
            raise ValueError("outline and labels are drawn on RGB frames: RenderSpec.yuv must be False")
        self.spec = spec
        self.log = log
        # Labels of replayed frames (recorded by an earlier chunk): their objects' prompts come
        # from the carry; objects found in this chunk are in ``log``.
        self.known_prompts = known_prompts or {}
        self.writers = [_PartWriter(name, spec, workdir, publish) for name in videos]
        self.busy_seconds = 0.0
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="render", daemon=True)
        self._thread.start()

    @property
    def codec(self) -> str:
        return next((w.codec for w in self.writers if w.codec != "none"), "none")

    def submit(self, index: int, frame: Frame | None, found: FrameObjects, pts: float) -> None:
        """A frame the model just finished: record its RLE; draw it if ``frame`` is given."""
        self._put(("live", index, frame, found, pts))

    def draw(self, index: int, frame: Frame, entry: dict, masks: np.ndarray) -> None:
        """Draw a frame whose entry and masks are already known (no RLE work)."""
        self._put(("draw", index, frame, entry, masks))

    def replay(self, index: int, frame: Frame, entry: dict) -> None:
        """A frame recorded by an earlier chunk but not yet encoded: draw it from its RLE."""
        self._put(("replay", index, frame, entry, None))

    def _put(self, item) -> None:
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=0.5)
                return
            except queue.Full:
                continue

    def _prompts(self, ids: list[int]) -> list[str | None] | None:
        if not self.spec.style.labels:
            return None
        known = self.log.object_prompts
        return [known.get(i) or self.known_prompts.get(i) for i in ids]

    def _draw(self, index: int, frame: Frame, ids: list[int], masks: np.ndarray, bboxes: list[list[float]]) -> None:
        for writer in self.writers:
            if writer.name == "overlay":
                # Drawn in place: the frame was decoded for this stage and is not read again.
                if self.spec.yuv:
                    writer.write(index, overlay_yuv(_i420(frame), ids, masks, self.spec.opacity, bboxes))
                else:
                    writer.write(index, overlay(frame.rgb, ids, masks, self.spec.opacity, bboxes, in_place=True,
                                                style=self.spec.style, prompts=self._prompts(ids)))
            else:
                writer.write(index, mask_frame(masks, self.spec.height, self.spec.width))

    def _handle(self, kind: str, index: int, frame: Frame | None, payload, extra) -> None:
        # live: payload is FrameObjects, extra its pts; draw: payload an entry, extra its masks;
        # replay: payload an entry whose masks come from its RLE.
        if kind == "live":
            entry = self.log.add(extra, payload)
            if frame is not None:
                self._draw(index, frame, payload.object_ids, payload.masks, [o["bbox"] for o in entry["objects"]])
            return
        objects = payload["objects"]
        if kind == "draw":
            self._draw(index, frame, [o["id"] for o in objects], extra, [o["bbox"] for o in objects])
            return
        masks = (np.stack([rle.decode(o["segmentation"]) for o in objects]) if objects
                 else np.zeros((0, self.spec.height, self.spec.width), dtype=bool))
        self._draw(index, frame, [o["id"] for o in objects], masks, [o["bbox"] for o in objects])

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                if self._error is not None:
                    continue  # drain so the producer never blocks on a dead stage
                start = time.perf_counter()
                try:
                    self._handle(*item)
                except BaseException as err:  # re-raised in the producer's thread
                    self._error = err
                self.busy_seconds += time.perf_counter() - start
            finally:
                self._queue.task_done()

    def drain(self) -> None:
        """Wait until everything submitted so far is recorded and drawn."""
        self._queue.join()
        if self._error is not None:
            raise self._error

    def set_limit(self, encode_limit: int) -> None:
        """The video ended at ``encode_limit``: everything below it is drawn, the last part ends there."""
        self.drain()
        self.spec = dataclasses.replace(self.spec, encode_limit=encode_limit)
        for writer in self.writers:
            writer.spec = self.spec

    def finish(self) -> None:
        self._queue.put(_STOP)
        self._thread.join()
        if self._error is not None:
            self.abort()
            raise self._error
        for writer in self.writers:
            writer.close_if_complete()
            writer.wait()
            writer.check_closed()

    def abort(self) -> None:
        if self._thread.is_alive():
            self._error = self._error or RuntimeError("aborted")
            self._queue.put(_STOP)
            self._thread.join()
        for writer in self.writers:
            writer.abort()


def _i420(frame: Frame) -> np.ndarray:
    """The frame's yuv420p planes; converted from RGB (swscale) when the decoder gave none."""
    if frame.yuv is not None:
        return frame.yuv
    import av

    return av.VideoFrame.from_ndarray(frame.rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
