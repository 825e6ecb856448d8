"""Segment one chunk of a video, carrying tracker memory in from the chunk before.

A chunk runs the model on frames [start, stop). SAM 3 holds each frame's output back for
``hotstart_delay`` frames, so the chunk emits the frames whose window has closed; the open window
(the hotstart buffer) travels in the tracker state to the next chunk, which decodes those few
frames again to draw them. Emitted frames are encoded only in whole grid segments
(``pipeline.core.planning``); frames emitted but not yet encoded travel as RLE entries and are replayed.

A run may start at ``start_frame`` > 0: chunks, the carry and frame entries keep source frame
indices, while the model numbers frames from 0 at ``start_frame`` (as if the video began there:
SAM 3 reads frame numbers, e.g. to recondition every n-th frame).

Every artifact is published under deterministic keys, each only when complete, so a chunk killed
mid-way and run again from the same input state overwrites, never duplicates; ``done.json`` is
written last and marks the chunk finished.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pipeline.core.planning import SEGMENT_FRAMES, Chunk, encode_limit
from pipeline.core.errors import InputError
from pipeline.core.storage import Storage
from pipeline.core.storage.base import join_key
from workers.decode import DecodeThread, Frame, open_reader, yuv_capable
from workers.encode import EncoderSettings
from workers.masks_document import FrameLog
from workers.model import LoadedModel
from workers.probe import VideoInfo
from workers.render import RenderSpec, RenderStage
from workers.tracker import FrameObjects, VideoTracker
from workers.state_codec import JSON_NAME, TENSORS_NAME, StateError, load_state, save_state
from workers.state_pruning import prune

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
            return cls(int(raw["next_frame"]), int(raw["render_from"]), int(raw["emitted_to"]), list(raw["pending"]))
        except (KeyError, TypeError, ValueError) as err:
            raise StateError(f"{source}: damaged carry file ({err!r})") from err


@dataclass(frozen=True)
class ChunkJob:
    info: VideoInfo
    chunk: Chunk
    num_frames: int | None  # planned frames from start_frame on (None: unknown until the stream ends)
    prompts: list[str]
    videos: list[str]
    mask_opacity: float = 0.5
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    segment_frames: int = SEGMENT_FRAMES
    start_frame: int = 0  # the video's first processed frame (chunk 0 starts there)
    detection_threshold: float | None = None  # None: the model's own


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


def chunk_key(prefix: str, k: int, name: str) -> str:
    return join_key(prefix, f"chunks/{k:05d}/{name}")


def segment_key(prefix: str, name: str, segment: int) -> str:
    return join_key(prefix, f"segments/{name}-{segment:06d}.mp4")


def _load_previous(job: ChunkJob, loaded: LoadedModel, artifacts: Storage, prefix: str,
                   workdir: Path) -> tuple[VideoTracker, Carry]:
    k = job.chunk.index
    if k == 0:
        origin = job.start_frame
        tracker = VideoTracker(loaded, job.prompts, job.info.height, job.info.width,
                               detection_threshold=job.detection_threshold)
        return tracker, Carry(origin, origin, origin)
    state_dir = workdir / "state-in"
    state_dir.mkdir()
    for name in (JSON_NAME, TENSORS_NAME, CARRY_NAME):
        key = chunk_key(prefix, k - 1, f"state/{name}")
        if not artifacts.exists(key):
            raise StateError(f"{artifacts.uri(key)}: missing; chunk {k - 1} has not finished")
        (state_dir / name).write_bytes(artifacts.get_bytes(key))
    carry = Carry.from_json((state_dir / CARRY_NAME).read_bytes(), artifacts.uri(chunk_key(prefix, k - 1, "state")))
    if carry.next_frame != job.chunk.start:
        raise StateError(f"chunk {k} starts at frame {job.chunk.start} but the state continues at {carry.next_frame}")
    tracker = load_state(state_dir, loaded)
    if tracker.detection_threshold != job.detection_threshold:
        raise StateError(f"chunk {k} asks for detection threshold {job.detection_threshold}, but the state was "
                         f"written with {tracker.detection_threshold}: a video's chunks must share their options")
    return tracker, carry


def _to_source(found: FrameObjects, origin: int) -> FrameObjects:
    """The model numbers frames from 0 at the first processed frame; outputs use source indices."""
    return dataclasses.replace(found, frame_idx=found.frame_idx + origin) if origin else found


def segment_chunk(job: ChunkJob, loaded: LoadedModel, artifacts: Storage, prefix: str = "",
                  progress=None) -> ChunkResult:
    chunk = job.chunk
    timings = {"decode": 0.0, "model": 0.0, "render": 0.0, "state": 0.0}
    with tempfile.TemporaryDirectory(prefix=f"sam3v-chunk{chunk.index}-") as tmp:
        workdir = Path(tmp)
        started = time.perf_counter()
        tracker, carry = _load_previous(job, loaded, artifacts, prefix, workdir)
        timings["state"] += time.perf_counter() - started
        delay = loaded.hotstart_delay
        origin = job.start_frame
        end = origin + job.num_frames if job.num_frames else chunk.stop
        limit = encode_limit(chunk.stop, chunk.final, end, delay, job.segment_frames, origin)
        limit = max(limit, carry.render_from)
        spec = RenderSpec(job.info.width, job.info.height, job.info.fps_rational, job.mask_opacity, job.encoder,
                          job.segment_frames, limit, yuv=yuv_capable(job.info), start_frame=origin)
        log = FrameLog()

        def publish(name: str, segment: int, path: Path) -> None:
            artifacts.put_file(path, segment_key(prefix, name, segment))

        render = RenderStage(workdir, job.videos, spec, log, publish)
        pending = {entry["frame"]: entry for entry in carry.pending}
        held: dict[int, Frame] = {}
        reader = open_reader(job.info, start=carry.render_from, count=chunk.stop - carry.render_from)
        decode = DecodeThread(reader)
        seen = carry.render_from
        undrawn: list[int] = []

        def emit(found: FrameObjects) -> None:
            found = _to_source(found, origin)
            frame = held.pop(found.frame_idx)
            draw = found.frame_idx < render.spec.encode_limit
            if not draw:
                undrawn.append(found.frame_idx)
            render.submit(found.frame_idx, frame if draw else None, found, frame.pts)

        try:
            for frame in decode:
                i = frame.index
                seen = i + 1
                if i < carry.emitted_to:
                    if i < limit:
                        render.replay(i, frame, pending[i])
                    continue
                held[i] = frame
                if i < chunk.start:
                    continue  # already in the model's hotstart buffer; drawn once emitted
                t0 = time.perf_counter()
                finished = tracker.push(i - origin, frame.rgb)
                prune(tracker, i - origin)
                timings["model"] += time.perf_counter() - t0
                for found in finished:
                    emit(found)
                if progress:
                    progress(i + 1 - origin)  # frames processed so far
            if chunk.index == 0 and origin > 0 and seen == origin:
                raise InputError(f"{job.info.path}: start_frame {origin} is past the end of the video: no frame "
                                 f"decodes from there ({reader.warning or 'the stream ends before it'})")
            ended = seen < chunk.stop
            if ended or chunk.final:
                t0 = time.perf_counter()
                finished = tracker.flush()
                timings["model"] += time.perf_counter() - t0
                # The stream may have ended before the planned end (a truncated file, an unknown
                # length): then frames emitted undrawn must be drawn after all, from their RLE.
                render.set_limit(seen)
                _replay_undrawn(job.info, undrawn, log, render)
                for found in finished:
                    emit(found)
            render.finish()
        except BaseException:
            decode.close()
            render.abort()
            raise
        timings["decode"] = decode.busy_seconds
        timings["render"] = render.busy_seconds
        emitted_to = log.frames[-1]["frame"] + 1 if log.frames else carry.emitted_to
        last = ended or chunk.final
        if last and render.spec.encode_limit < emitted_to:
            raise RuntimeError("internal: frames left unencoded at the end of the video")
        warnings = [reader.warning] if reader.warning else []

        # Publish: frames first, then the state for the next chunk, then the marker.
        artifacts.put_bytes(log.to_json(), chunk_key(prefix, chunk.index, "frames.json"))
        if not last:
            t0 = time.perf_counter()
            state_dir = workdir / "state-out"
            save_state(tracker, state_dir)
            new_limit = render.spec.encode_limit
            all_entries = {**pending, **{e["frame"]: e for e in log.frames}}
            nxt = Carry(chunk.stop, new_limit, emitted_to,
                        [all_entries[i] for i in range(new_limit, emitted_to)])
            (state_dir / CARRY_NAME).write_bytes(nxt.to_json())
            for name in (JSON_NAME, TENSORS_NAME, CARRY_NAME):
                artifacts.put_file(state_dir / name, chunk_key(prefix, chunk.index, f"state/{name}"))
            timings["state"] += time.perf_counter() - t0
        result = ChunkResult(chunk.index, (carry.emitted_to, emitted_to), ended, seen if last else None,
                             reader.backend, render.codec, warnings, timings)
        artifacts.put_bytes(json.dumps(asdict(result)).encode(), chunk_key(prefix, chunk.index, "done.json"))
        return result


def _replay_undrawn(info: VideoInfo, undrawn: list[int], log: FrameLog, render: RenderStage) -> None:
    if not undrawn:
        return
    entries = {entry["frame"]: entry for entry in log.frames}
    with open_reader(info, start=undrawn[0], count=undrawn[-1] + 1 - undrawn[0]) as again:
        for frame in again:
            render.replay(frame.index, frame, entries[frame.index])
    undrawn.clear()
