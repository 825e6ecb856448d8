"""Finalize a video: join chunk outputs into one masks.json and one file per output video, and
write the exports asked for (coco.json, ...) from the document.

Encoded parts are joined without re-encoding (ffmpeg's concat demuxer), given the source's timestamps
when it is variable-rate, and the original audio is muxed once, cut to the processed frames' span.
"""

from __future__ import annotations

import math
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipeline.core.errors import ProcessingError
from pipeline.core.layout import OUTPUT_FILES, THUMBNAIL_FILES, WorkKeys
from pipeline.core.storage import Storage, join_key
from workers.media.exports import make_exports, publish_exports
from workers.media.masks_document import FrameLog, build_document, document_json
from workers.media.mux import add_audio, is_constant_rate, retime
from workers.media.probe import VideoInfo
from workers.media.thumbnails import video_thumbnails


def concat_parts(parts: list[Path], out: Path) -> None:
    listing = out.with_suffix(".txt")
    # The concat demuxer's own quoting: paths are ours (temp dir), never user text.
    listing.write_text("".join(f"file '{p.as_posix()}'\n" for p in parts))
    done = subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "concat", "-safe", "0",
         "-i", str(listing), "-map", "0:v:0", "-c", "copy", "-movflags", "+faststart", str(out)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        raise ProcessingError(f"could not join {len(parts)} encoded parts: {done.stderr.strip()[-300:]}")


def finalize_video(info: VideoInfo, artifacts: Storage, work: WorkKeys, num_chunks: int, videos: list[str],
                   model: dict, params: dict, prompts: list[str], out: Storage, out_prefix: str,
                   part_frames: int, claim: Callable[[], None] | None = None,
                   exports: list[str] = ()) -> tuple[dict, dict[str, str], str | None, list[str]]:
    """Returns (masks.json document, {output name: URI}, audio handling, thumbnail URIs). Every
    output is made locally first; ``claim`` (it raises to refuse) is called before anything is
    published, so a video cancelled meanwhile gets no outputs at all. ``exports``: names from
    EXPORT_NAMES. The thumbnails (for the job's report) are stored beside masks.json but are not
    outputs: no API result lists them."""
    logs = [FrameLog.from_json(artifacts.get_bytes(work.frames(k))) for k in range(num_chunks)]
    frames = [entry for log in logs for entry in log.frames]
    if not frames:
        raise ProcessingError(f"{info.path}: no frame was processed")
    start_frame = params.get("start_frame") or 0  # absent: a header from before the option
    pts = [entry["pts"] for entry in frames]
    vfr = not is_constant_rate(pts, info.fps)
    video = {
        "width": info.width, "height": info.height,
        "encoded_width": info.width + info.width % 2, "encoded_height": info.height + info.height % 2,
        "fps": info.fps, "fps_rational": info.fps_rational, "rotation": info.rotation,
        "source_frames_expected": info.frames_expected, "variable_frame_rate": vfr, "has_audio": info.has_audio,
    }
    document = build_document(model, params, video, prompts, logs, start_frame)
    limited = start_frame + len(frames) < (info.frames_expected or 0)
    duration = (pts[-1] - pts[0]) + 1.0 / info.fps
    # The videos start at the first processed frame (time 0): so must the audio. Without a seek,
    # ffmpeg lines up the source's earliest stream instead: in MPEG-TS the audio (its AAC priming)
    # starts ~21 ms before the video, and was that much late.
    audio_from = pts[0] if start_frame or abs(pts[0]) > 1e-6 else None
    made: dict[str, Path] = {}
    audio = None
    thumbnails = video_thumbnails(info, document)
    with tempfile.TemporaryDirectory(prefix="sam3v-final-") as tmp:
        scratch = Path(tmp)
        for name in videos:
            parts = []
            for g in range(math.ceil(len(frames) / part_frames)):
                part = scratch / f"{name}-{g:06d}.mp4"
                part.write_bytes(artifacts.get_bytes(work.part(name, g)))
                parts.append(part)
            path = scratch / f"{name}.joined.mp4"
            concat_parts(parts, path)
            if vfr:
                timed = scratch / f"{name}.timed.mp4"
                retime(path, pts, timed)
                path = timed
            if info.has_audio:
                with_audio = scratch / f"{name}.mp4"
                audio = add_audio(path, Path(info.path), with_audio,
                                  duration if limited or audio_from is not None else None, audio_from)
                path = with_audio
            made[name] = path
        exported = make_exports(document, exports, scratch)
        if claim is not None:
            claim()
        uris = {name: out.put_file(path, join_key(out_prefix, OUTPUT_FILES[name])) for name, path in made.items()}
        uris.update(publish_exports(exported, out, out_prefix))
        thumbs = [out.put_bytes(data, join_key(out_prefix, name)) for name, data in zip(THUMBNAIL_FILES, thumbnails)]
        # masks.json last: when it is there, the videos and exports are too.
        uris = {"masks": out.put_bytes(document_json(document), join_key(out_prefix, OUTPUT_FILES["masks"])), **uris}
    return document, uris, audio, thumbs
