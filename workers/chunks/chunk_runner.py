"""Run one chunk of a video, carrying tracker memory in from the chunk before.

A chunk runs the model on frames [start, stop). SAM 3 holds each frame's output back for
``hotstart_delay`` frames, so the chunk emits the frames whose window has closed; the open window
(the hotstart buffer) travels in the tracker state to the next chunk, which decodes those few
frames again to draw them. Emitted frames are encoded only in whole grid parts
(``pipeline.core.planning``); frames emitted but not yet encoded travel as RLE entries and are replayed.

A run may start at ``start_frame`` > 0: chunks, the carry and frame entries keep source frame
indices, while the model numbers frames from 0 at ``start_frame`` (as if the video began there:
SAM 3 reads frame numbers, e.g. to recondition every n-th frame).

Every artifact is published under deterministic keys, each only when complete, so a chunk killed
mid-way and run again from the same input state overwrites, never duplicates; ``done.json`` is
written last and marks the chunk finished. A chunk whose work is no longer wanted (``should_stop``:
its job was cancelled) stops at its next frame and publishes nothing more.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.core.errors import Cancelled, InputError
from pipeline.core.layout import WorkKeys
from pipeline.core.planning import PART_FRAMES, Chunk, encode_limit
from pipeline.core.storage import Storage
from workers.chunks.backward_pass import read_masks
from workers.media.composite import FILL, OverlayStyle
from workers.media.decode import DecodeThread, Frame, open_reader, yuv_capable
from workers.media.encode import EncoderSettings
from workers.media.frame_objects import FrameObjects
from workers.media.masks_document import FrameLog
from workers.media.probe import VideoInfo
from workers.media.render import RenderSpec, RenderStage
from workers.model.engine import FrameEngine, engine_for
from workers.model.loading import LoadedModel
from workers.model.state_codec import (
    JSON_NAME,
    TENSORS_NAME,
    StateError,
    load_state,
    save_state,
)
from workers.model.state_pruning import prune
from workers.model.tracker import VideoTracker
from workers.model.visual_objects import backward_span, exemplar_boxes, visual_objects

CARRY_FORMAT = "sam3v.chunk-carry"
CARRY_VERSION = 1
CARRY_NAME = "carry.json"


@dataclass
class Carry:
    """What the next chunk needs besides the tracker: where drawing and emitting stand."""

    # Source frame indices, like Chunk's.
    next_frame: int = 0  # the next chunk's first model frame
    render_from: int = 0  # first frame not yet encoded
    emitted_to: int = 0  # frames below were emitted (recorded in some chunk's frames.json)
    pending: list[dict] = field(default_factory=list)  # entries of frames [render_from, emitted_to)
    # The prompt of each object in ``pending``: their labels are drawn by the next chunk. Absent
    # from a carry written before labels (an older worker): read as none, the labels show ids only.
    object_prompts: dict[int, str] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"format": CARRY_FORMAT, "version": CARRY_VERSION, **asdict(self)}).encode()

    @classmethod
    def from_json(cls, data: bytes, source: str) -> Carry:
        try:
            raw = json.loads(data)
        except ValueError as err:
            raise StateError(f"{source}: not valid JSON ({err})") from err
        if not isinstance(raw, dict) or raw.get("format") != CARRY_FORMAT:
            raise StateError(f"{source}: not a sam3v chunk carry file")
        if raw.get("version") != CARRY_VERSION:
            raise StateError(f"{source}: carry version {raw.get('version')}, this sam3v reads {CARRY_VERSION}")
        try:
            return cls(int(raw["next_frame"]), int(raw["render_from"]), int(raw["emitted_to"]), list(raw["pending"]),
                       {int(k): str(v) for k, v in (raw.get("object_prompts") or {}).items()})
        except (KeyError, TypeError, ValueError) as err:
            raise StateError(f"{source}: damaged carry file ({err!r})") from err


@dataclass(frozen=True)
class ChunkInputs:
    """Everything one chunk needs besides the model and the previous chunk's state."""

    info: VideoInfo
    chunk: Chunk
    num_frames: int | None  # planned frames from start_frame on (None: unknown until the stream ends)
    prompts: list[str]
    videos: list[str]
    mask_opacity: float = 0.5
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    part_frames: int = PART_FRAMES
    start_frame: int = 0  # the video's first processed frame (chunk 0 starts there)
    detection_threshold: float | None = None  # None: the model's own
    decoder: str = "pyav"  # the decoder tried first (SAM3V_DECODER)
    frame_batch: int = 1  # frames per detector batch, on the video's own grid (recorded when planned)
    style: OverlayStyle = FILL  # the overlay's fill/outline and labels
    # Visual prompts (``ObjectPrompt``s, or dicts of their fields): objects given as points, a box or
    # a mask on a frame, tracked both ways (the backward pass's chunks, ``workers.chunks.backward_pass``,
    # run before the forward ones; chunk k reads backward chunk k's masks).
    objects: tuple = ()
    exemplars: tuple = ()  # ``Exemplar``s: boxes the detector reads beside the text prompts on their frame

    @property
    def damaged_is_error(self) -> bool:
        """A video in several chunks fails at the chunk that meets a damaged packet (naming the
        frame): decoding past it would number the later frames differently in each chunk that reads
        them, and the video could not be joined. A video in one chunk is decoded past damage, as
        the ffmpeg CLI does."""
        return not (self.chunk.index == 0 and self.chunk.final)


@dataclass
class ChunkResult:
    chunk: int
    emitted: tuple[int, int]
    ended: bool  # the stream ended in this chunk: no chunk follows
    num_frames: int | None  # frames in the video, once known (ended)
    decoder: str
    encoder: str
    warnings: list[str]
    timings: dict[str, float]


def _to_source(found: FrameObjects, origin: int) -> FrameObjects:
    """The model numbers frames from 0 at the first processed frame; outputs use source indices."""
    return dataclasses.replace(found, frame_idx=found.frame_idx + origin) if origin else found


# The stream and the render stage the runner holds get callbacks built from the parts they need,
# never the runner's own methods: runner -> stream -> bound method -> runner was a reference cycle,
# so a finished chunk (its tracker session, its frames) stayed in memory until Python's next full
# garbage collection, which a worker whose heap holds torch and transformers seldom runs
# (docs/performance.md, "Worker memory").

def _after_step(tracker: VideoTracker, start_frame: int, progress: Callable[[int], None] | None,
                should_stop: Callable[[], bool] | None) -> Callable[[int], None]:
    """What runs after each frame's tracking step (not when it is pushed: a group waits for its last frame)."""

    def stepped(frame_idx: int) -> None:
        prune(tracker, frame_idx)
        if progress:
            progress(frame_idx + 1)  # frames through the model so far, counted from start_frame
        # A group's steps run after its last frame is pushed: asked here too, a cancel (or the chunk's
        # own time limit, in a threads pool) stops the chunk within a frame, not a group.
        if should_stop and should_stop():
            raise Cancelled(f"stopped at frame {frame_idx + 1 + start_frame}: its video is no longer wanted")

    return stepped


def _part_publisher(artifacts: Storage, work: WorkKeys) -> Callable[[str, int, Path], None]:
    def publish(name: str, part: int, path: Path) -> None:
        artifacts.put_file(path, work.part(name, part))

    return publish


class ChunkRunner:
    """One chunk in four steps: ``load_state``, ``run`` (decode -> model -> render), ``flush`` (the
    end of the video), ``publish`` (frames, the next chunk's state, then the done marker)."""

    def __init__(self, inputs: ChunkInputs, loaded: LoadedModel, artifacts: Storage, work: WorkKeys,
                 workdir: Path, progress: Callable[[int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, engine: FrameEngine | None = None,
                 alone: bool = False):
        self.inputs, self.loaded, self.artifacts, self.work = inputs, loaded, artifacts, work
        self.engine, self.alone = engine or engine_for(loaded), alone
        self.workdir, self.progress = workdir, progress
        # Asked before every frame, so it must be cheap (the task side reads Redis at most every second).
        self.should_stop = should_stop
        self.timings = {"decode": 0.0, "model": 0.0, "render": 0.0, "state": 0.0}
        self.log = FrameLog()
        self.held: dict[int, Frame] = {}  # decoded frames waiting for their model output
        self.undrawn: list[int] = []  # frames emitted past the encode limit (drawn later, or by the next chunk)

    # --- load state ---------------------------------------------------------------------------
    def load_state(self) -> None:
        started = time.perf_counter()
        self.tracker, self.carry = self.engine.guarded(self._previous, self.alone)  # a restore may run out of memory
        self.timings["state"] += time.perf_counter() - started
        job, chunk, origin = self.inputs, self.inputs.chunk, self.inputs.start_frame
        end = origin + job.num_frames if job.num_frames else chunk.stop
        limit = encode_limit(chunk.stop, chunk.final, end, self.loaded.hotstart_delay, job.part_frames, origin)
        self.limit = max(limit, self.carry.render_from)
        # Outline and labels are drawn on RGB: the encoder then converts (swscale), as for any
        # source the yuv420p path cannot take.
        yuv = yuv_capable(job.info) and job.style.plain
        spec = RenderSpec(job.info.width, job.info.height, job.info.fps_rational, job.mask_opacity, job.encoder,
                          job.part_frames, self.limit, yuv=yuv, start_frame=origin, style=job.style)
        self.render = RenderStage(self.workdir, job.videos, spec, self.log, _part_publisher(self.artifacts, self.work),
                                  known_prompts=self.carry.object_prompts)
        self.pending = {entry["frame"]: entry for entry in self.carry.pending}
        # The backward pass's masks of this chunk's frames (its backward chunk ran before), put with each
        # frame's outputs when the frame is pushed; those of frames the chunk leaves in its hotstart
        # buffer travel in the tracker state.
        self.backward = (read_masks(self.artifacts, self.work, chunk.index, self.visual, job.info.height,
                                    job.info.width)
                         if chunk.start - origin < backward_span(self.visual) else None)
        self.stream = self.engine.open_feed(self.tracker, job.frame_batch,
                                              _after_step(self.tracker, origin, self.progress, self.should_stop),
                                              self.alone, f"chunk {chunk.index}")
        # Whole detector groups: the frames of the first and last group outside [start, stop) are
        # decoded as context (features only), so batches match an unchunked run's.
        self.context_from, last = (origin + g for g in self.stream.group_bounds(chunk.start - origin,
                                                                                chunk.stop - origin))
        first, context_to = min(self.context_from, self.carry.render_from), min(last, end)
        self.reader = open_reader(job.info, start=first, count=context_to - first, first=job.decoder,
                                  strict=job.damaged_is_error)
        self.decode = DecodeThread(self.reader)
        self.seen = self.carry.render_from

    def _previous(self) -> tuple[VideoTracker, Carry]:
        job, k = self.inputs, self.inputs.chunk.index
        self.visual = visual_objects(job.objects, job.start_frame, job.info.height, job.info.width)
        if k == 0:
            origin = job.start_frame
            tracker = VideoTracker(self.loaded, job.prompts, job.info.height, job.info.width,
                                   detection_threshold=job.detection_threshold, visual=self.visual,
                                   num_frames=job.num_frames, exemplars=self._exemplars())
            return tracker, Carry(origin, origin, origin)
        state_dir = self.workdir / "state-in"
        state_dir.mkdir()
        for name in (JSON_NAME, TENSORS_NAME, CARRY_NAME):
            key = self.work.state(k - 1, name)
            if not self.artifacts.exists(key):
                raise StateError(f"{self.artifacts.uri(key)}: missing; chunk {k - 1} has not finished")
            (state_dir / name).write_bytes(self.artifacts.get_bytes(key))
        carry = Carry.from_json((state_dir / CARRY_NAME).read_bytes(), self.artifacts.uri(self.work.state_dir(k - 1)))
        if carry.next_frame != job.chunk.start:
            raise StateError(f"chunk {k} starts at frame {job.chunk.start} but the state continues at {carry.next_frame}")
        tracker = load_state(state_dir, self.loaded, visual=self.visual)
        tracker.exemplars = self._exemplars()  # inputs, not state
        if tracker.detection_threshold != job.detection_threshold:
            raise StateError(f"chunk {k} asks for detection threshold {job.detection_threshold}, but the state was "
                             f"written with {tracker.detection_threshold}: a video's chunks must share their options")
        return tracker, carry

    def _exemplars(self) -> dict[int, tuple[list, list]]:
        job = self.inputs
        return exemplar_boxes(job.exemplars, job.start_frame, job.info.height, job.info.width, job.num_frames)

    # --- run ----------------------------------------------------------------------------------
    def run(self) -> None:
        chunk, origin = self.inputs.chunk, self.inputs.start_frame
        for frame in self.decode:
            i = frame.index
            if self.should_stop and self.should_stop():
                raise Cancelled(f"stopped at frame {i}: its video is no longer wanted")
            if i >= chunk.stop:  # context after the chunk: features for its last group only
                self._push(i, frame, context=True)
                continue
            if self.context_from <= i < chunk.start:
                self._push(i, frame, context=True)  # context before the chunk, in its first group
            if i < self.carry.render_from:
                continue
            self.seen = i + 1
            if i < self.carry.emitted_to:
                if i < self.limit:
                    self.render.replay(i, frame, self.pending[i])
                continue
            self.held[i] = frame
            if i < chunk.start:
                continue  # already in the model's hotstart buffer; drawn once emitted
            self._push(i, frame, context=False)
        self._drain()
        if chunk.index == 0 and origin > 0 and self.seen == origin:
            raise InputError(f"{self.inputs.info.path}: start_frame {origin} is past the end of the video: no frame "
                             f"decodes from there ({self.reader.warning or 'the stream ends before it'})")

    def _push(self, i: int, frame: Frame, context: bool) -> None:
        t0 = time.perf_counter()
        if self.backward is not None and not context:
            found = self.backward.take(i - self.inputs.start_frame)
            if found is not None:
                self.tracker.backward[found.frame_idx] = found
        finished = self.stream.push(i - self.inputs.start_frame, frame.rgb, context)
        self.timings["model"] += time.perf_counter() - t0
        for found in finished:
            self._emit(found)

    def _drain(self) -> None:
        t0 = time.perf_counter()
        finished = self.stream.drain()
        self.timings["model"] += time.perf_counter() - t0
        for found in finished:
            self._emit(found)

    def _emit(self, found: FrameObjects) -> None:
        found = _to_source(found, self.inputs.start_frame)
        frame = self.held.pop(found.frame_idx)
        draw = found.frame_idx < self.render.spec.encode_limit
        if not draw:
            self.undrawn.append(found.frame_idx)
        self.render.submit(found.frame_idx, frame if draw else None, found, frame.pts)

    # --- flush --------------------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self.seen < self.inputs.chunk.stop

    @property
    def last(self) -> bool:
        """No chunk follows: the stream ended here, or this is the planned last chunk."""
        return self.ended or self.inputs.chunk.final

    def flush(self) -> None:
        """At the end of the video: the hotstart buffer's frames, and frames left undrawn."""
        if self.last:
            t0 = time.perf_counter()
            finished = self.stream.flush()
            self.timings["model"] += time.perf_counter() - t0
            # The stream may have ended before the planned end (a truncated file, an unknown
            # length): then frames emitted undrawn must be drawn after all, from their RLE.
            self.render.set_limit(self.seen)
            self._replay_undrawn()
            for found in finished:
                self._emit(found)
        self.render.finish()

    def _replay_undrawn(self) -> None:
        if not self.undrawn:
            return
        entries = {entry["frame"]: entry for entry in self.log.frames}
        first, last = self.undrawn[0], self.undrawn[-1]
        with open_reader(self.inputs.info, start=first, count=last + 1 - first, first=self.inputs.decoder,
                         strict=self.inputs.damaged_is_error) as again:
            for frame in again:
                self.render.replay(frame.index, frame, entries[frame.index])
        self.undrawn.clear()

    def abort(self) -> None:
        self.stream.close()
        self.decode.close()
        self.render.abort()

    # --- publish ------------------------------------------------------------------------------
    def publish(self) -> ChunkResult:
        """Frames first, then the state for the next chunk, then the marker (written last)."""
        self.timings["decode"] = self.decode.busy_seconds
        self.timings["render"] = self.render.busy_seconds
        emitted_to = self.log.frames[-1]["frame"] + 1 if self.log.frames else self.carry.emitted_to
        if self.last and self.render.spec.encode_limit < emitted_to:
            raise RuntimeError("internal: frames left unencoded at the end of the video")
        k = self.inputs.chunk.index
        self.artifacts.put_bytes(self.log.to_json(), self.work.frames(k))
        if not self.last:
            self._publish_state(emitted_to)
        warnings = [w for w in (self.reader.warning, self.tracker.object_cap_warning()) if w]
        result = ChunkResult(k, (self.carry.emitted_to, emitted_to), self.ended, self.seen if self.last else None,
                             self.reader.backend, self.render.codec, warnings, self.timings)
        self.artifacts.put_bytes(json.dumps(asdict(result)).encode(), self.work.done(k))
        return result

    def _publish_state(self, emitted_to: int) -> None:
        t0 = time.perf_counter()
        state_dir = self.workdir / "state-out"
        save_state(self.tracker, state_dir)
        new_limit = self.render.spec.encode_limit
        entries = {**self.pending, **{e["frame"]: e for e in self.log.frames}}
        pending = [entries[i] for i in range(new_limit, emitted_to)]
        known = {**self.carry.object_prompts, **self.log.object_prompts}
        prompts = {o["id"]: known[o["id"]] for e in pending for o in e["objects"] if o["id"] in known}
        nxt = Carry(self.inputs.chunk.stop, new_limit, emitted_to, pending, prompts)
        (state_dir / CARRY_NAME).write_bytes(nxt.to_json())
        for name in (JSON_NAME, TENSORS_NAME, CARRY_NAME):
            self.artifacts.put_file(state_dir / name, self.work.state(self.inputs.chunk.index, name))
        self.timings["state"] += time.perf_counter() - t0


def run_chunk_inputs(inputs: ChunkInputs, loaded: LoadedModel, artifacts: Storage, work: WorkKeys,
                     progress: Callable[[int], None] | None = None,
                     should_stop: Callable[[], bool] | None = None, engine: FrameEngine | None = None,
                     alone: bool = False) -> ChunkResult:
    """Run one chunk and publish its artifacts under ``work``; raises ``Cancelled`` (nothing more
    published) once ``should_stop()`` says so. ``engine``: this process's (``engine_for``) unless
    given; ``alone``: the caller holds the engine to itself (``engine.exclusive.alone()``)."""
    with tempfile.TemporaryDirectory(prefix=f"sam3v-chunk{inputs.chunk.index}-") as tmp:
        runner = ChunkRunner(inputs, loaded, artifacts, work, Path(tmp), progress, should_stop, engine, alone)
        runner.load_state()
        try:
            runner.run()
            runner.flush()
        except BaseException:
            runner.abort()
            raise
        return runner.publish()
