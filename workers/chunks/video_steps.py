"""One video's steps, owned here and nowhere else: prepare (probe + plan), run backward chunk k (for
visual objects prompted after the first frame), run chunk k, finalize.

Two drivers run them. ``segment_video`` below runs them in order in this process (``sam3v
segment``); the Celery tasks (``workers.jobs.tasks``) call exactly one step each, chained per video
(the embedded ``sam3v run`` and the HTTP API's embedded mode use those tasks on the in-process
broker). Both plan with ``pipeline.core.planning.plan_chunks``, so a chunked run and an unchunked
one cut the video the same way and give the same outputs.

A video whose container does not say how many frames it has is counted (ffprobe counts packets,
demuxing only) before it is planned, on both paths: a plan needs its chunk list up front to chain
the chunks across workers, and progress and ETA need a total. A file that decodes fewer frames than
planned (truncated, damaged) ends early: its last chunk says so and the chunks after it return.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from pipeline.core.errors import InputError
from pipeline.core.layout import WorkKeys
from pipeline.core.planning import (
    PART_FRAMES,
    Chunk,
    default_chunk_frames,
    frames_to_process,
    plan_backward,
    plan_chunks,
)
from pipeline.core.specs import EXPORT_NAMES, VIDEO_OUTPUTS, VideoOptions
from pipeline.core.storage import LocalStorage, Storage
from workers.chunks.backward_pass import BackwardResult, run_backward_chunk
from workers.chunks.chunk_runner import (
    ChunkInputs,
    ChunkResult,
    run_chunk_inputs,
)
from workers.chunks.finalize import finalize_video
from workers.media.composite import OverlayStyle
from workers.media.encode import EncoderSettings
from workers.media.masks_document import prompt_name
from workers.media.probe import VideoInfo, probe
from workers.model.engine import engine_for
from workers.model.loading import LoadedModel
from workers.model.model_source import looks_like_path
from workers.model.tracker import check_prompts
from workers.model.visual_objects import VisualObject, backward_span, exemplar_boxes, visual_objects

Progress = Callable[[int, int | None], None]


@dataclass(frozen=True)
class VideoPlan:
    info: VideoInfo
    num_frames: int  # frames processed, from start_frame on
    chunks: list[Chunk]


@dataclass(frozen=True)
class Finalized:
    outputs: dict[str, str]  # output name -> URI (masks, overlay, mask, exports)
    num_frames: int
    num_objects: int
    num_chunks: int
    audio: str | None
    thumbnails: list[str] = field(default_factory=list)  # URIs, beside masks.json (the job's report)
    objects_by_prompt: dict[str, int] = field(default_factory=dict)


@dataclass
class SegmentResult:
    outputs: dict[str, str]  # name -> URI (masks, overlay, mask, exports)
    num_frames: int
    num_objects: int
    num_chunks: int
    warnings: list[str]
    timings: dict[str, float]
    decoder: str
    encoder: str
    audio: str | None


# --- step 1: prepare -----------------------------------------------------------------------------

def count_frames(path: Path, name: str) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
                          "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", f"file:{path}"],
                         capture_output=True, text=True, timeout=600)
    # MPEG-TS lists the stream once per program section as well: the first value is the count.
    values = [line.split(",")[0] for line in out.stdout.splitlines() if line.strip()]
    try:
        return int(values[0])
    except (IndexError, ValueError):
        raise InputError(f"{name}: cannot count its frames") from None


def prepare(path: Path, opts: VideoOptions, name: str, chunk_seconds: float | None) -> VideoPlan:
    """Probe the video at ``path`` (``name``: what the user called it) and plan its chunks:
    ``opts.chunk_frames``, else ``chunk_seconds`` of video, else (None) one chunk."""
    info = probe(path, name)
    expected = info.frames_expected or count_frames(path, name)
    if expected < 1:
        raise InputError(f"{name}: no video frames")
    num_frames = frames_to_process(expected, opts.start_frame, opts.max_frames, name)
    size = opts.chunk_frames or (default_chunk_frames(info.fps, chunk_seconds) if chunk_seconds else None)
    return VideoPlan(info, num_frames, plan_chunks(num_frames, size, opts.start_frame))


def public_model_id(source: str) -> str:
    """The model as masks.json names it: a hub id as is; a local directory by its name only (the
    documents leave the host, through the API too: a server's own paths are not theirs to show;
    ``revision`` identifies the weights)."""
    return f"local:{PurePath(source).name}" if looks_like_path(source) else source


def document_header(loaded: LoadedModel, opts: VideoOptions, prompts: list[str]) -> tuple[dict, dict]:
    """masks.json's "model" and "params". Chunking is left out: it never changes results."""
    model = {"id": public_model_id(loaded.source), "revision": loaded.revision, "tiny_random": loaded.is_tiny}
    params = {"prompts": prompts, "apply_mask": opts.apply_mask, "outputs": opts.video_outputs() + ["rle"] + opts.exports(),
              "start_frame": opts.start_frame, "max_frames": opts.max_frames, "mask_opacity": opts.mask_opacity,
              "detection_threshold": opts.detection_threshold,
              "overlay_style": opts.overlay_style, "labels": opts.labels,
              "device": loaded.device.type, "hotstart_delay": loaded.hotstart_delay,
              "postprocess": loaded.postprocess.params()}
    return model, params


# --- step 2: run chunk k -------------------------------------------------------------------------

@dataclass(frozen=True)
class VideoRun:
    """What every chunk of one video shares."""

    info: VideoInfo
    opts: VideoOptions
    prompts: list[str]  # checked against the model's tokenizer
    num_frames: int  # planned frames from start_frame on
    part_frames: int = PART_FRAMES
    decoder: str = "pyav"
    frame_batch: int = 1  # the video's detector batch (recorded when it is planned)
    objects: tuple = ()  # visual prompts (ObjectPrompt), tracked both ways
    exemplars: tuple = ()  # Exemplar boxes, read by the detector beside the text prompts on their frame

    def visual(self) -> list[VisualObject]:
        return visual_objects(self.objects, self.opts.start_frame, self.info.height, self.info.width)

    def backward_chunks(self, chunks: list[Chunk]) -> list[Chunk]:
        """The backward pass's chunks on ``chunks``' grid, in the order they run (none: no pass)."""
        return plan_backward(chunks, backward_span(self.visual()), self.opts.start_frame)

    def inputs(self, chunk: Chunk) -> ChunkInputs:
        o = self.opts
        return ChunkInputs(self.info, chunk, self.num_frames, self.prompts, o.video_outputs(), o.mask_opacity,
                           EncoderSettings(), self.part_frames, o.start_frame, o.detection_threshold, self.decoder,
                           self.frame_batch, OverlayStyle.of(o.overlay_style, o.labels), tuple(self.objects),
                           tuple(self.exemplars))


def chunk_done(artifacts: Storage, work: WorkKeys, k: int) -> dict | None:
    """Chunk k's done.json, if it finished."""
    key = work.done(k)
    return json.loads(artifacts.get_bytes(key)) if artifacts.exists(key) else None


def chunk_needed(artifacts: Storage, work: WorkKeys, k: int) -> bool:
    """False when chunk k finished before (a redelivery) or the stream ended in an earlier chunk."""
    if artifacts.exists(work.done(k)):
        return False
    return not (k > 0 and (chunk_done(artifacts, work, k - 1) or {}).get("ended"))


def run_chunk(video: VideoRun, chunk: Chunk, loaded: LoadedModel, artifacts: Storage, work: WorkKeys,
              progress: Callable[[int], None] | None = None,
              should_stop: Callable[[], bool] | None = None, alone: bool = False,
              max_batch: int | None = None) -> ChunkResult | None:
    """Run ``chunk``, carrying the tracker in from chunk k-1's state; None when not needed.
    ``should_stop`` is asked before every frame; once it says yes the chunk raises ``Cancelled``
    and publishes nothing more (no frames, state or done marker). ``alone``: with this process's
    engine to itself (a chunk that ran out of GPU memory beside others runs again so).
    ``max_batch``: most frames in one backbone call across this process's streams (SAM3V_MAX_BATCH)."""
    if not chunk_needed(artifacts, work, chunk.index):
        return None
    engine = engine_for(loaded, max_batch)
    if not alone:
        return run_chunk_inputs(video.inputs(chunk), loaded, artifacts, work, progress, should_stop, engine)
    with engine.exclusive.alone():
        return run_chunk_inputs(video.inputs(chunk), loaded, artifacts, work, progress, should_stop, engine, True)


def run_backward(video: VideoRun, chunk: Chunk, loaded: LoadedModel, artifacts: Storage, work: WorkKeys,
                 strict: bool, progress: Callable[[int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None, alone: bool = False,
                 max_batch: int | None = None) -> BackwardResult | None:
    """Run backward chunk ``chunk`` (``VideoRun.backward_chunks``'), its session carried in from
    backward chunk k+1; None when it finished before (a redelivery). ``strict``: the video has more
    than one (forward) chunk, so damage fails it (``ChunkInputs.damaged_is_error``); ``progress``:
    frames of the backward pass done; the rest as ``run_chunk``."""
    if artifacts.exists(work.backward.done(chunk.index)):
        return None
    engine = engine_for(loaded, max_batch)
    # Not through the frame engine's batches (a backward pass takes one frame at a time, in its own
    # order), but under its out-of-memory guard, and alone when asked, as a chunk.

    def work_() -> BackwardResult:
        return run_backward_chunk(loaded, video.info, video.visual(), video.opts.start_frame, chunk, artifacts, work,
                                  video.decoder, strict, progress, should_stop)

    if not alone:
        return engine.guarded(work_, False)
    with engine.exclusive.alone():
        return engine.guarded(work_, True)


# --- step 3: finalize ----------------------------------------------------------------------------

def chunks_run(artifacts: Storage, work: WorkKeys, planned: int) -> int:
    """How many chunks produced output: all planned ones, or up to the one where the stream ended."""
    for k in range(planned):
        if json.loads(artifacts.get_bytes(work.done(k))).get("ended"):
            return k + 1
    return planned


def finalize(info: VideoInfo, header: dict, artifacts: Storage, work: WorkKeys, planned_chunks: int,
             out: Storage, out_prefix: str, part_frames: int, claim: Callable[[], None] | None = None) -> Finalized:
    """Join the chunks' outputs into masks.json and the output videos under ``out_prefix``; ``claim``:
    see ``finalize_video``."""
    chunks = chunks_run(artifacts, work, planned_chunks)
    outputs = header["params"]["outputs"]
    document, uris, audio, thumbnails = finalize_video(
        info, artifacts, work, chunks, [o for o in outputs if o in VIDEO_OUTPUTS], header["model"], header["params"],
        header["prompts"], out, out_prefix, part_frames, claim, [o for o in outputs if o in EXPORT_NAMES])
    per_prompt = dict.fromkeys(document["prompts"], 0)
    for obj in document["objects"]:
        key = prompt_name(obj["prompt"])  # visual objects (a box, points or a mask) are counted together
        per_prompt[key] = per_prompt.get(key, 0) + 1
    return Finalized(uris, document["video"]["num_frames"], len(document["objects"]), chunks, audio, thumbnails,
                     per_prompt)


# --- the local driver ----------------------------------------------------------------------------

def merged_warnings(recorded: list[str], new: list[str]) -> list[str]:
    """A video's warnings after one more chunk: each once, however many chunks repeat it."""
    return recorded + [w for w in new if w not in recorded]


@dataclass
class _Tally:
    timings: dict[str, float] = field(default_factory=lambda: {"decode": 0.0, "model": 0.0, "render": 0.0,
                                                               "state": 0.0})
    warnings: list[str] = field(default_factory=list)
    decoders: list[str] = field(default_factory=list)
    encoder: str = "none"

    def add(self, done: ChunkResult) -> None:
        for key, value in done.timings.items():
            self.timings[key] += value
        self.warnings = merged_warnings(self.warnings, done.warnings)
        self.decoders.append(done.decoder)
        self.encoder = done.encoder if done.encoder != "none" else self.encoder


def segment_video(source: str | Path, loaded: LoadedModel, opts: VideoOptions, prompts: list[str],
                  storage: Storage, prefix: str = "", progress: Progress | None = None,
                  part_frames: int = PART_FRAMES, decoder: str = "pyav", frame_batch: int = 1,
                  max_batch: int | None = None, objects: Sequence | None = None,
                  exemplars: Sequence | None = None) -> SegmentResult:
    """Run every step of one video here: masks.json and the requested videos under ``prefix``.
    ``objects``: visual prompts (``ObjectPrompt``s), tracked both ways; ``exemplars``: ``Exemplar``
    boxes that sharpen the text prompts on their frames (None: ``opts``' own, a ``VideoSpec``'s).

    Chunk artifacts go to a temporary directory; every chunk boundary goes through the tracker
    state codec (written, then read back), exactly as when chunks run on different workers."""
    wall = time.perf_counter()
    objects = getattr(opts, "objects", ()) if objects is None else objects
    exemplars = getattr(opts, "exemplars", ()) if exemplars is None else exemplars
    prompts = check_prompts(loaded.tokenizer, prompts, visual=bool(objects), exemplars=bool(exemplars))
    name = Path(source).name
    plan = prepare(Path(source), opts, name, chunk_seconds=None)
    # Before any compute (the task path checks them in its probe step: check_against_video).
    visual_objects(objects, opts.start_frame, plan.info.height, plan.info.width, plan.num_frames)
    exemplar_boxes(exemplars, opts.start_frame, plan.info.height, plan.info.width, plan.num_frames)  # refused here
    video = VideoRun(plan.info, opts, prompts, plan.num_frames, part_frames, decoder, frame_batch, tuple(objects),
                     tuple(exemplars))
    backward = video.backward_chunks(plan.chunks)
    back_frames = sum(c.stop - c.start for c in backward)
    total = back_frames + plan.num_frames  # progress counts both passes
    tally = _Tally()
    work = WorkKeys()
    with tempfile.TemporaryDirectory(prefix="sam3v-chunks-") as tmp:
        artifacts = LocalStorage(tmp)
        for chunk in backward:
            run_backward(video, chunk, loaded, artifacts, work, len(plan.chunks) > 1,
                         (lambda n: progress(n, total)) if progress else None, max_batch=max_batch)
        for chunk in plan.chunks:
            done = run_chunk(video, chunk, loaded, artifacts, work,
                             (lambda n: progress(back_frames + n, total)) if progress else None, max_batch=max_batch)
            if done is None:
                break  # the stream ended in the chunk before
            tally.add(done)
        t0 = time.perf_counter()
        model, params = document_header(loaded, opts, prompts)
        final = finalize(plan.info, {"model": model, "params": params, "prompts": prompts}, artifacts, work,
                         len(plan.chunks), storage, prefix, part_frames)
        tally.timings["mux"] = time.perf_counter() - t0
    if final.num_frames < plan.num_frames:
        tally.warnings.insert(0, f"{name}: the header promises {plan.info.frames_expected or opts.start_frame + plan.num_frames} "
                                 f"frames but only "
                                 f"{opts.start_frame + final.num_frames} decoded (truncated or damaged file); "
                                 "processed those")
    tally.timings["wall"] = time.perf_counter() - wall
    return SegmentResult(final.outputs, final.num_frames, final.num_objects, final.num_chunks, tally.warnings,
                         tally.timings, "/".join(dict.fromkeys(tally.decoders)), tally.encoder, final.audio)
