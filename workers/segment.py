"""Segment one video end to end: decode -> SAM 3 -> masks -> composite -> outputs.

Three stages overlap: a decode thread, the model on this thread, and the render thread
(RLE + composite + ffmpeg encoders, which run as processes of their own).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import InputError
from pipeline.storage import Storage
from workers.decode import DecodeThread, Frame, open_reader
from workers.encode import EncoderSettings, even
from workers.masks_document import MasksDocument
from workers.model import LoadedModel
from workers.mux import add_audio, is_constant_rate, retime
from workers.probe import VideoInfo, probe
from workers.render import VIDEO_OUTPUTS, RenderSpec, RenderStage
from workers.tracker import VideoTracker, check_prompts

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("overlay", "mask", "rle")
Progress = Callable[[int, int | None], None]


@dataclass
class SegmentOptions:
    prompts: list[str]
    apply_mask: bool = True
    outputs: tuple[str, ...] | None = None  # None: the one apply_mask picks
    max_frames: int | None = None
    mask_opacity: float = 0.5
    encoder: EncoderSettings = field(default_factory=EncoderSettings)

    def video_outputs(self) -> list[str]:
        wanted = self.outputs or (("overlay",) if self.apply_mask else ("mask",))
        unknown = [o for o in wanted if o not in OUTPUT_NAMES]
        if unknown:
            raise InputError(f"--outputs: unknown output {unknown[0]!r} (choose from {', '.join(OUTPUT_NAMES)})")
        return [o for o in VIDEO_OUTPUTS if o in wanted]


@dataclass
class SegmentResult:
    outputs: dict[str, str]  # name -> URI (masks, overlay, mask)
    num_frames: int
    num_objects: int
    warnings: list[str]
    timings: dict[str, float]
    decoder: str
    encoder: str
    audio: str | None


def _validate_options(opts: SegmentOptions) -> None:
    if opts.max_frames is not None and opts.max_frames < 1:
        raise InputError(f"--max-frames {opts.max_frames}: must be at least 1")
    if not 0.0 <= opts.mask_opacity <= 1.0:
        raise InputError(f"--mask-opacity {opts.mask_opacity}: must be between 0 and 1")


def _video_section(info: VideoInfo, pts: list[float]) -> dict:
    return {
        "width": info.width,
        "height": info.height,
        "encoded_width": even(info.width),
        "encoded_height": even(info.height),
        "fps": info.fps,
        "fps_rational": info.fps_rational,
        "rotation": info.rotation,
        "source_frames_expected": info.frames_expected,
        "variable_frame_rate": not is_constant_rate(pts, info.fps),
        "has_audio": info.has_audio,
    }


def segment_video(source: str | Path, loaded: LoadedModel, opts: SegmentOptions, storage: Storage,
                  prefix: str = "", progress: Progress | None = None) -> SegmentResult:
    """Segment ``source`` and write masks.json and the requested videos under ``prefix``."""
    wall = time.perf_counter()
    _validate_options(opts)
    prompts = check_prompts(loaded.tokenizer, opts.prompts)
    videos = opts.video_outputs()
    info = probe(source)
    reader = open_reader(info, start=0, count=opts.max_frames)
    limits = [n for n in (info.frames_expected, opts.max_frames) if n]
    total = min(limits) if limits else None

    with tempfile.TemporaryDirectory(prefix="sam3v-") as tmp:
        workdir = Path(tmp)
        document = MasksDocument(
            model={"id": loaded.source, "revision": loaded.revision, "tiny_random": loaded.is_tiny},
            params={"prompts": prompts, "apply_mask": opts.apply_mask, "outputs": videos + ["rle"],
                    "max_frames": opts.max_frames, "mask_opacity": opts.mask_opacity,
                    "device": loaded.device.type, "hotstart_delay": loaded.hotstart_delay},
            video={}, prompts=prompts,
        )
        spec = RenderSpec(info.width, info.height, info.fps_rational, no_bframes=True,
                          opacity=opts.mask_opacity, encoder=opts.encoder)
        render = RenderStage(workdir, videos, spec, document)
        decode = DecodeThread(reader)
        tracker = VideoTracker(loaded, prompts, info.height, info.width)
        pending: dict[int, Frame] = {}
        pts: list[float] = []
        model_busy = 0.0
        try:
            for frame in decode:
                pending[frame.index] = frame
                pts.append(frame.pts)
                start = time.perf_counter()
                finished = tracker.push(frame.index, frame.rgb)
                model_busy += time.perf_counter() - start
                for found in finished:
                    render.submit(pending.pop(found.frame_idx), found)
                if progress:
                    progress(len(pts), total)
            start = time.perf_counter()
            finished = tracker.flush()
            model_busy += time.perf_counter() - start
            for found in finished:
                render.submit(pending.pop(found.frame_idx), found)
            encoded = render.finish()
        except BaseException:
            decode.close()
            render.abort()
            raise
        if not pts:
            raise InputError(f"{source}: no frame could be decoded")

        warnings = []
        if total and len(pts) < total:
            detail = f" ({reader.warning})" if reader.warning else ""
            warnings.append(f"{Path(source).name}: the header promises {info.frames_expected} frames but only "
                            f"{len(pts)} decoded (truncated or damaged file); processed those{detail}")
        document.video = _video_section(info, pts)

        mux_start = time.perf_counter()
        finals, audio = _finish_videos(encoded, info, pts, workdir, limited=len(pts) < (info.frames_expected or 0))
        uris = {"masks": storage.put_bytes(document.to_json(), _key(prefix, "masks.json"))}
        for name, path in finals.items():
            uris[name] = storage.put_file(path, _key(prefix, f"{name}.mp4"))
        mux_seconds = time.perf_counter() - mux_start

    return SegmentResult(
        outputs=uris,
        num_frames=len(pts),
        num_objects=len(document.to_dict()["objects"]),
        warnings=warnings,
        timings={"decode": decode.busy_seconds, "model": model_busy, "render": render.busy_seconds,
                 "mux": mux_seconds, "wall": time.perf_counter() - wall},
        decoder=reader.backend,
        encoder=next(iter(render.encoders.values())).codec if render.encoders else "none",
        audio=audio,
    )


def _key(prefix: str, name: str) -> str:
    return f"{prefix.strip('/')}/{name}" if prefix.strip("/") else name


def _finish_videos(encoded: dict[str, Path], info: VideoInfo, pts: list[float], workdir: Path,
                   limited: bool) -> tuple[dict[str, Path], str | None]:
    """Source timestamps, then audio, onto each encoded video."""
    vfr = not is_constant_rate(pts, info.fps)
    duration = (pts[-1] - pts[0]) + 1.0 / info.fps if pts else None
    finals: dict[str, Path] = {}
    audio = None
    for name, path in encoded.items():
        if vfr:
            timed = workdir / f"{name}.timed.mp4"
            retime(path, pts, timed)
            path = timed
        if info.has_audio:
            with_audio = workdir / f"{name}.mp4"
            audio = add_audio(path, Path(info.path), with_audio, duration if limited else None)
            path = with_audio
        finals[name] = path
    return finals, audio
