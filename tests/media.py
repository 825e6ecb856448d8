"""Build small test videos with the system ffmpeg.

Each builder takes a directory and returns the path of the file it made there. A builder skips the
work when its file already exists, so a session-scoped directory acts as a cache across tests.
Everything is tiny (a few dozen frames, a few hundred pixels) because the test machine has 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

# ../shared/videos beside the repository (SAM3V_SHARED overrides); never copied into it.
REAL_VIDEOS = Path(os.environ.get("SAM3V_SHARED", Path(__file__).resolve().parents[2] / "shared")) / "videos"
DOG = REAL_VIDEOS / "01_dog.mp4"  # 1280x720, 30000/1001, 289 frames, aac audio
BEDROOM = REAL_VIDEOS / "bedroom.mp4"  # 960x540, 30 fps, 200 frames, no audio

def ffmpeg(*args: str | Path) -> None:
    """Run ffmpeg quietly; raise with its stderr on failure so a broken fixture is obvious."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *map(str, args)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")


def ffmpeg_has_encoder(name: str) -> bool:
    out = subprocess.run(
        ["ffmpeg", "-hide_banner", "-encoders"], capture_output=True, text=True, check=True
    ).stdout
    return any(line.split()[1:2] == [name] for line in out.splitlines() if line.strip())


def frame_pts_times(path: Path) -> list[float]:
    """Per-frame presentation times as ffprobe decodes them (best-effort timestamps)."""
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "frame=best_effort_timestamp_time", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout
    return [float(f["best_effort_timestamp_time"]) for f in json.loads(out)["frames"]]


def autorotated_first_frame(path: Path, width: int, height: int) -> bytes:
    """First frame as ffmpeg itself shows it: ffmpeg applies the display matrix by default."""
    proc = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(path), "-frames:v", "1",
         "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    )
    assert len(proc.stdout) == width * height * 3, (len(proc.stdout), width, height)
    return proc.stdout


def _cached(directory: Path, name: str) -> tuple[Path, bool]:
    path = Path(directory) / name
    return path, path.exists()


def _testsrc(size: str, frames: int, rate: int = 30) -> list[str]:
    """A finite testsrc2 input a little longer than `frames`; callers cut it with -frames:v."""
    return ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate={rate}:duration={(frames + 1) / rate}"]


# --- bad inputs --------------------------------------------------------------------------------


def zero_byte(directory: Path) -> Path:
    path, done = _cached(directory, "zero.mp4")
    if not done:
        path.write_bytes(b"")
    return path


def png_renamed_mp4(directory: Path) -> Path:
    path, done = _cached(directory, "image.mp4")
    if not done:
        png = Path(directory) / "image.png"
        ffmpeg(*_testsrc("64x48", 1), "-frames:v", "1", png)
        png.rename(path)
    return path


def random_bytes(directory: Path) -> Path:
    path, done = _cached(directory, "noise.mp4")
    if not done:
        # A fixed pseudo-random pattern (no seeds to manage, same file every run).
        path.write_bytes(bytes((i * 7919 + 13) % 251 for i in range(64 * 1024)))
    return path


def audio_only(directory: Path) -> Path:
    path, done = _cached(directory, "audio.m4a")
    if not done:
        ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-c:a", "aac", path)
    return path


def audio_with_cover(directory: Path) -> Path:
    """An mp3 with cover art: ffprobe lists the picture as a video stream (attached_pic)."""
    path, done = _cached(directory, "cover.mp3")
    if not done:
        cover = Path(directory) / "cover.jpg"
        ffmpeg(*_testsrc("64x64", 1), "-frames:v", "1", cover)
        ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:duration=1", "-i", cover,
               "-map", "0:a", "-map", "1:v", "-c:a", "libmp3lame", "-c:v", "mjpeg",
               "-disposition:v", "attached_pic", path)
    return path


# --- good inputs -------------------------------------------------------------------------------


def odd_size(directory: Path) -> Path:
    """321x241 with audio. x264 refuses odd sizes in 4:2:0, so this is 4:4:4 H.264; testsrc2
    rounds its size to even, so the source is testsrc."""
    path, done = _cached(directory, "odd_321x241.mp4")
    if not done:
        ffmpeg("-f", "lavfi", "-i", "testsrc=size=321x241:rate=30:duration=0.5",
               "-f", "lavfi", "-i", "sine=frequency=440:duration=0.4", "-frames:v", "12",
               "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv444p",
               "-c:a", "aac", "-shortest", path)
    return path


def plain(directory: Path) -> Path:
    """320x180 H.264, 30 fps, 20 frames, no audio; B-frames, a keyframe every 8 frames so a
    seek to frame 10 really starts from a later keyframe."""
    path, done = _cached(directory, "plain_320x180.mp4")
    if not done:
        ffmpeg(*_testsrc("320x180", 20), "-frames:v", "20", "-c:v", "libx264",
               "-preset", "veryfast", "-g", "8", "-keyint_min", "8", "-pix_fmt", "yuv420p", path)
    return path


def rotated(directory: Path, clockwise: int = 90) -> Path:
    """Coded 320x180 with a display matrix saying "turn `clockwise` degrees to display".

    Phone-style portrait (clockwise=90) is what ffprobe 5.1 reports as rotation -90.
    Surprise: ffmpeg 5.1 turns `-metadata:s:v rotate=R` into a display matrix that displays
    the frames turned R degrees *counter-clockwise* (ffmpeg's own autorotate agrees), the
    opposite of the legacy `rotate` tag meaning. So the tag written here is -clockwise.
    """
    path, done = _cached(directory, f"rotated_cw{clockwise}.mp4")
    if not done:
        ffmpeg("-i", plain(directory), "-c", "copy",
               "-metadata:s:v:0", f"rotate={(-clockwise) % 360}", path)
    return path


def vfr(directory: Path) -> Path:
    """Variable frame rate: every third frame lasts twice as long (pts 0,1,2,4,5,6,8,... /30 s)."""
    path, done = _cached(directory, "vfr.mp4")
    if not done:
        ffmpeg(*_testsrc("160x120", 18), "-frames:v", "18", "-vf", "setpts=(N+floor(N/3))/30/TB",
               "-fps_mode", "vfr", "-c:v", "libx264", "-preset", "veryfast",
               "-pix_fmt", "yuv420p", "-video_track_timescale", "30000", path)
    return path


def ts_offset(directory: Path) -> Path:
    """MPEG-TS: its timestamps start at ~1.4 s, not 0, so start_time matters."""
    path, done = _cached(directory, "offset.ts")
    if not done:
        ffmpeg(*_testsrc("160x120", 10), "-frames:v", "10", "-c:v", "libx264",
               "-preset", "veryfast", "-pix_fmt", "yuv420p", path)
    return path


def one_frame(directory: Path) -> Path:
    path, done = _cached(directory, "one_frame.mp4")
    if not done:
        ffmpeg(*_testsrc("160x120", 1), "-frames:v", "1", "-c:v", "libx264", "-pix_fmt", "yuv420p",
               path)
    return path


def vp9_webm(directory: Path) -> Path:
    path, done = _cached(directory, "vp9.webm")
    if not done:
        ffmpeg(*_testsrc("160x120", 10), "-frames:v", "10", "-c:v", "libvpx-vp9",
               "-deadline", "realtime", "-cpu-used", "8", "-b:v", "200k", "-pix_fmt", "yuv420p",
               path)
    return path


def av1(directory: Path) -> Path:
    """AV1 in mp4. decord's bundled FFmpeg 4.1 has no AV1 decoder: this exercises the fallback."""
    path, done = _cached(directory, "av1.mp4")
    if not done:
        if ffmpeg_has_encoder("libaom-av1"):
            codec = ["-c:v", "libaom-av1", "-cpu-used", "8", "-row-mt", "1", "-b:v", "100k"]
        elif ffmpeg_has_encoder("libsvtav1"):
            codec = ["-c:v", "libsvtav1", "-preset", "12"]
        else:
            codec = ["-c:v", "librav1e", "-speed", "10"]
        ffmpeg(*_testsrc("64x64", 8), "-frames:v", "8", *codec, "-pix_fmt", "yuv420p", path)
    return path


def hevc_10bit(directory: Path) -> Path:
    path, done = _cached(directory, "hevc10.mp4")
    if not done:
        ffmpeg(*_testsrc("160x120", 10), "-frames:v", "10", "-c:v", "libx265",
               "-preset", "ultrafast", "-x265-params", "log-level=error",
               "-pix_fmt", "yuv420p10le", "-tag:v", "hvc1", path)
    return path


def truncated_mp4(directory: Path, keep: float = 0.6) -> Path:
    """30 frames, moov first (+faststart), then cut to `keep` of its bytes.

    The header still promises 30 frames; only the frames whose bytes survived can decode.
    """
    path, done = _cached(directory, f"truncated_{int(keep * 100)}.mp4")
    if not done:
        full = Path(directory) / "truncated_source.mp4"
        if not full.exists():
            # Intra-only (-g 1) keeps frame sizes similar so the cut lands mid-file, not mid-GOP.
            ffmpeg(*_testsrc("160x120", 30), "-frames:v", "30", "-c:v", "libx264",
                   "-preset", "veryfast", "-g", "1", "-pix_fmt", "yuv420p",
                   "-movflags", "+faststart", full)
        data = full.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
    return path


def undecodable(directory: Path) -> Path:
    """Header intact (probes fine, promises 30 frames) but every media byte replaced by zeros."""
    path, done = _cached(directory, "undecodable.mp4")
    if not done:
        truncated_mp4(directory)  # makes truncated_source.mp4
        data = bytearray((Path(directory) / "truncated_source.mp4").read_bytes())
        mdat = data.find(b"mdat")
        assert mdat > 0 and data.find(b"moov") < mdat, "expected a faststart mp4"
        data[mdat + 4 :] = bytes(len(data) - mdat - 4)
        path.write_bytes(bytes(data))
    return path


def clip(directory: Path, frames: int, source: Path = DOG) -> Path:
    """First `frames` frames of a real clip, audio kept.

    Re-encoded (ultrafast) rather than stream-copied: with B-frames, the first N packets in decode
    order are not the first N frames in display order.
    """
    path, done = _cached(directory, f"{source.stem}_{frames}f.mp4")
    if not done:
        ffmpeg("-i", source, "-map", "0:v:0", "-map", "0:a?", "-frames:v", str(frames),
               "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p",
               "-c:a", "copy", "-shortest", path)
    return path


BEEP_AT = 0.8  # seconds: where hue_beep's tone starts


def hue_beep(directory: Path) -> Path:
    """320x180, 30 fps, 48 frames, a keyframe every 12; the hue turns 12 degrees a frame, so
    neighbouring frames differ everywhere (mean |diff| ~18) and far ones a lot (~150). Its audio is
    silent until BEEP_AT seconds (source frame 24), then a 440 Hz tone: where the tone starts in
    an output tells whether its audio is in sync."""
    path, done = _cached(directory, "hue_beep.mp4")
    if not done:
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=320x180:rate=30",
               "-f", "lavfi", "-i", f"aevalsrc='if(gte(t,{BEEP_AT}),0.5*sin(2*PI*440*t),0)':s=48000",
               "-vf", "hue=H=2*PI*t", "-t", "1.6", "-c:v", "libx264", "-preset", "veryfast",
               "-g", "12", "-keyint_min", "12", "-pix_fmt", "yuv420p", "-c:a", "aac", path)
    return path


def hue_beep_ts(directory: Path) -> Path:
    """hue_beep remuxed to MPEG-TS: the clock starts at ~1.4 s, and the audio (its AAC priming)
    ~21 ms before the video."""
    path, done = _cached(directory, "hue_beep.ts")
    if not done:
        ffmpeg("-i", hue_beep(directory), "-c", "copy", "-f", "mpegts", path)
    return path


def small_dog(directory: Path, frames: int, width: int = 320, height: int = 180) -> Path:
    """The first `frames` frames of the dog clip scaled down (cheap for the model), audio kept."""
    path, done = _cached(directory, f"dog_{width}x{height}_{frames}f.mp4")
    if not done:
        ffmpeg("-i", DOG, "-frames:v", str(frames), "-vf", f"scale={width}:{height}", "-c:v", "libx264",
               "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", path)
    return path


def damaged_copy(clip_path: Path, out: Path, packet: int) -> Path:
    """A copy of ``clip_path`` whose video packet ``packet`` (in file order) is overwritten with noise
    past its first bytes: the file is corrupt in the middle, the rest intact."""
    import json
    import random
    import subprocess

    shown = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=pos,size",
                            "-of", "json", str(clip_path)], capture_output=True, text=True, check=True)
    target = json.loads(shown.stdout)["packets"][packet]
    pos, size = int(target["pos"]), int(target["size"])
    data = bytearray(Path(clip_path).read_bytes())
    noise = random.Random(packet)
    for i in range(pos + 4, pos + size):  # keep the NAL length prefix's start: the demuxer still splits packets
        data[i] = noise.randrange(256)
    out.write_bytes(bytes(data))
    return out
