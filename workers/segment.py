"""Segment one video end to end: decode -> SAM 3 -> masks -> composite -> outputs.

The video runs as a sequence of chunks (one, unless ``chunk_frames`` is set); every chunk boundary
goes through the tracker state codec (written, then read back), exactly as when chunks run on
different workers. Within a chunk three stages overlap: a decode thread, the model on this thread,
and the render thread (RLE + composite + ffmpeg encoders, which run as processes of their own).
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.core.planning import SEGMENT_FRAMES, Chunk, frames_to_process
from pipeline.core.errors import InputError
from pipeline.core.storage import LocalStorage, Storage
from workers.chunk_runner import ChunkJob, segment_chunk
from workers.encode import EncoderSettings
from workers.model import LoadedModel
from workers.probe import probe
from workers.render import VIDEO_OUTPUTS
from workers.finalize import finalize_video
from workers.tracker import check_prompts

OUTPUT_NAMES = ("overlay", "mask", "rle")
Progress = Callable[[int, int | None], None]


@dataclass
class SegmentOptions:
    prompts: list[str]
    apply_mask: bool = True
    outputs: tuple[str, ...] | None = None  # None: the one apply_mask picks
    max_frames: int | None = None  # counted from start_frame
    chunk_frames: int | None = None  # None or 0: one chunk
    mask_opacity: float = 0.5
    start_frame: int = 0  # first source frame processed; outputs cover [start_frame, ...) only
    detection_threshold: float | None = None  # None: the model's own (0.5 for SAM 3)
    encoder: EncoderSettings = field(default_factory=EncoderSettings)
    # The encode grid; tests shrink it (SAM3V_SEGMENT_FRAMES) to cross it on short clips.
    segment_frames: int = field(default_factory=lambda: int(os.environ.get("SAM3V_SEGMENT_FRAMES", SEGMENT_FRAMES)))

    def video_outputs(self) -> list[str]:
        wanted = self.outputs or (("overlay",) if self.apply_mask else ("mask",))
        unknown = [o for o in wanted if o not in OUTPUT_NAMES]
        if unknown:
            raise InputError(f"--outputs: unknown output {unknown[0]!r} (choose from {', '.join(OUTPUT_NAMES)})")
        return [o for o in VIDEO_OUTPUTS if o in wanted]

    def validate(self) -> None:
        if self.max_frames is not None and self.max_frames < 1:
            raise InputError(f"--max-frames {self.max_frames}: must be at least 1")
        if self.chunk_frames is not None and self.chunk_frames < 0:
            raise InputError(f"--chunk-frames {self.chunk_frames}: must be 0 (one chunk) or more")
        if not 0.0 <= self.mask_opacity <= 1.0:
            raise InputError(f"--mask-opacity {self.mask_opacity}: must be between 0 and 1")
        if isinstance(self.start_frame, bool) or not isinstance(self.start_frame, int) or self.start_frame < 0:
            raise InputError(f"--start-frame {self.start_frame}: must be a frame index, 0 or more")
        # `not 0 <= t <= 1` also refuses NaN.
        if self.detection_threshold is not None and not 0.0 <= self.detection_threshold <= 1.0:
            raise InputError(f"--detection-threshold {self.detection_threshold}: must be between 0 and 1")
        self.video_outputs()


@dataclass
class SegmentResult:
    outputs: dict[str, str]  # name -> URI (masks, overlay, mask)
    num_frames: int
    num_objects: int
    num_chunks: int
    warnings: list[str]
    timings: dict[str, float]
    decoder: str
    encoder: str
    audio: str | None


def document_header(loaded: LoadedModel, opts: SegmentOptions, prompts: list[str]) -> tuple[dict, dict]:
    """masks.json's "model" and "params". Chunking is left out: it never changes results."""
    model = {"id": loaded.source, "revision": loaded.revision, "tiny_random": loaded.is_tiny}
    params = {"prompts": prompts, "apply_mask": opts.apply_mask, "outputs": opts.video_outputs() + ["rle"],
              "start_frame": opts.start_frame, "max_frames": opts.max_frames, "mask_opacity": opts.mask_opacity,
              "detection_threshold": opts.detection_threshold,
              "device": loaded.device.type, "hotstart_delay": loaded.hotstart_delay}
    return model, params


def segment_video(source: str | Path, loaded: LoadedModel, opts: SegmentOptions, storage: Storage,
                  prefix: str = "", progress: Progress | None = None) -> SegmentResult:
    """Segment ``source`` and write masks.json and the requested videos under ``prefix``."""
    wall = time.perf_counter()
    opts.validate()
    prompts = check_prompts(loaded.tokenizer, opts.prompts)
    videos = opts.video_outputs()
    info = probe(source)
    first = opts.start_frame
    planned = frames_to_process(info.frames_expected, first, opts.max_frames, Path(source).name)
    size = opts.chunk_frames or planned or 1 << 40

    timings = {"decode": 0.0, "model": 0.0, "render": 0.0, "state": 0.0}
    warnings: list[str] = []
    decoders: list[str] = []
    encoder = "none"
    with tempfile.TemporaryDirectory(prefix="sam3v-chunks-") as tmp:
        artifacts = LocalStorage(tmp)
        k = 0
        while True:
            # The same chunks as plan_chunks(planned, size, first); also when the length is unknown.
            start = first + k * size
            stop = min(start + size, first + planned) if planned else start + size
            chunk = Chunk(k, start, stop, final=planned is not None and stop >= first + planned)
            job = ChunkJob(info, chunk, planned, prompts, videos, opts.mask_opacity, opts.encoder, opts.segment_frames,
                           first, opts.detection_threshold)
            done = segment_chunk(job, loaded, artifacts,
                                 progress=(lambda n: progress(n, planned)) if progress else None)
            for key, value in done.timings.items():
                timings[key] += value
            warnings += done.warnings
            decoders.append(done.decoder)
            encoder = done.encoder if done.encoder != "none" else encoder
            if done.ended or chunk.final:
                break
            k += 1
        t0 = time.perf_counter()
        model, params = document_header(loaded, opts, prompts)
        document, uris, audio = finalize_video(info, artifacts, "", k + 1, videos, model, params, prompts,
                                               storage, prefix, opts.segment_frames)
        timings["mux"] = time.perf_counter() - t0
    num_frames = document["video"]["num_frames"]
    if planned and num_frames < planned:
        warnings.insert(0, f"{Path(source).name}: the header promises {info.frames_expected} frames but only "
                           f"{first + num_frames} decoded (truncated or damaged file); processed those")
    timings["wall"] = time.perf_counter() - wall
    return SegmentResult(uris, num_frames, len(document["objects"]), k + 1, warnings, timings,
                         "/".join(dict.fromkeys(decoders)), encoder, audio)
