"""probe + decode on real files made by the system ffmpeg: no mocks.

References come from the ffmpeg/ffprobe CLIs (independent of decord and PyAV): ffprobe's
per-frame timestamps, and ffmpeg's own autorotated RGB output for orientation.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import InputError
from tests import media
from workers.media.decode import DecodeThread, Frame, iter_frames, open_reader
from workers.media.probe import probe

Builder = Callable[[Path], Path]

# name -> (builder, expected probe fields, backend open_reader picks by default: PyAV, which
# decodes on demand; see open_reader for why decord comes second)
GOOD: dict[str, tuple[Builder, dict[str, object], str]] = {
    "plain": (media.plain, dict(width=320, height=180, rotation=0, fps_rational="30/1",
                                frames_expected=20, has_audio=False, video_codec="h264"), "pyav"),
    "odd_size": (media.odd_size, dict(width=321, height=241, fps_rational="30/1",
                                      frames_expected=12, has_audio=True, audio_codec="aac",
                                      pix_fmt="yuv444p"), "pyav"),
    "rotated": (media.rotated, dict(width=180, height=320, coded_width=320, coded_height=180,
                                    rotation=90, frames_expected=20), "pyav"),
    "vfr": (media.vfr, dict(width=160, height=120, fps_rational="540/23",
                            frames_expected=18), "pyav"),
    "one_frame": (media.one_frame, dict(width=160, height=120, frames_expected=1), "pyav"),
    "vp9_webm": (media.vp9_webm, dict(width=160, height=120, video_codec="vp9",
                                      frames_expected=None, container="matroska,webm"), "pyav"),
    "hevc_10bit": (media.hevc_10bit, dict(video_codec="hevc", pix_fmt="yuv420p10le",
                                          frames_expected=10), "pyav"),
    "av1": (media.av1, dict(width=64, height=64, video_codec="av1", frames_expected=8), "pyav"),
    "ts_offset": (media.ts_offset, dict(container="mpegts", frames_expected=None), "pyav"),
}
# Frames each file decodes to (the header count is missing for webm and TS).
FRAMES = {"vp9_webm": 10, "ts_offset": 10}


@pytest.fixture(scope="module")
def backends_used() -> Iterator[dict[str, str]]:
    used: dict[str, str] = {}
    yield used
    print("\nbackend per format:", used)


# --- probe -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD)
def test_probe_reports_size_rotation_rate_and_audio(name: str, media_dir: Path) -> None:
    make, expected, _ = GOOD[name]
    info = probe(make(media_dir))
    for field, value in expected.items():
        assert getattr(info, field) == value, field
    assert info.fps > 0 and info.duration and info.duration > 0
    assert (info.audio_codec is None) == (not info.has_audio)


def test_probe_real_clips() -> None:
    dog = probe(media.DOG)
    assert (dog.width, dog.height, dog.rotation) == (1280, 720, 0)
    assert dog.fps_rational == "30000/1001" and abs(dog.fps - 29.97) < 0.01
    assert dog.frames_expected == 289 and dog.has_audio and dog.audio_codec == "aac"
    bedroom = probe(media.BEDROOM)
    assert (bedroom.width, bedroom.height, bedroom.frames_expected) == (960, 540, 200)
    assert bedroom.fps == 30.0 and not bedroom.has_audio and bedroom.audio_codec is None


def test_probe_start_time_of_mpegts(media_dir: Path) -> None:
    src = media.ts_offset(media_dir)
    assert probe(src).start_time == pytest.approx(media.frame_pts_times(src)[0], abs=1e-6)
    assert probe(src).start_time > 1.0  # MPEG-TS muxers start the clock at ~1.4 s


@pytest.mark.parametrize(("make", "words"), [
    (media.zero_byte, "is empty"),
    (media.png_renamed_mp4, "is not a video file (ffprobe: still image"),
    (media.random_bytes, "is not a video file (ffprobe: Invalid data"),
    (media.audio_only, "has no video stream"),
    (media.audio_with_cover, "has no video stream"),  # cover art is not a video
], ids=lambda x: getattr(x, "__name__", None))
def test_probe_rejects_bad_input_naming_the_file(make: Builder, words: str,
                                                 media_dir: Path) -> None:
    path = make(media_dir)
    with pytest.raises(InputError) as caught:
        probe(path)
    message = str(caught.value)
    assert str(path) in message and words in message and "\n" not in message
    assert caught.value.exit_code == 2


def test_probe_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^no such file: .*nope\.mp4$"):
        probe(tmp_path / "nope.mp4")


# --- decode: every good format -----------------------------------------------------------------


@pytest.mark.parametrize("name", GOOD)
def test_decode_every_format(name: str, media_dir: Path, backends_used: dict[str, str]) -> None:
    make, _, backend = GOOD[name]
    info = probe(make(media_dir))
    with open_reader(info) as reader:
        frames = list(reader)
    backends_used[name] = reader.backend
    assert reader.backend == backend
    assert reader.warning is None
    assert len(frames) == (info.frames_expected or FRAMES[name])
    assert [f.index for f in frames] == list(range(len(frames)))
    for f in frames:
        assert f.rgb.shape == (info.height, info.width, 3) and f.rgb.dtype == np.uint8
        assert f.rgb.flags.c_contiguous
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and pts[0] == pytest.approx(info.start_time, abs=1e-3)
    assert frames[-1].rgb.std() > 10  # real picture content, not a blank buffer


@pytest.mark.parametrize("name", ["plain", "odd_size", "rotated", "vfr", "vp9_webm", "hevc_10bit"])
def test_decord_and_pyav_agree(name: str, media_dir: Path) -> None:
    info = probe(GOOD[name][0](media_dir))
    with open_reader(info, backend="decord") as reader:
        by_decord = list(reader)
    with open_reader(info, backend="pyav") as reader:
        by_pyav = list(reader)
    assert len(by_decord) == len(by_pyav)
    for a, b in zip(by_decord, by_pyav):
        assert a.index == b.index and a.pts == pytest.approx(b.pts, abs=1e-3)
        # Identical for 8-bit; 10-bit -> rgb24 conversions round differently (mean diff ~4).
        assert np.abs(a.rgb.astype(np.int16) - b.rgb).mean() < 6


# --- orientation -------------------------------------------------------------------------------


def _mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


@pytest.mark.parametrize("clockwise", [90, 180, 270])
def test_rotation_matches_ffmpeg_autorotate(clockwise: int, media_dir: Path) -> None:
    src = media.rotated(media_dir, clockwise)
    info = probe(src)
    assert info.rotation == clockwise
    assert (info.width, info.height) == ((180, 320) if clockwise % 180 else (320, 180))
    shown = np.frombuffer(media.autorotated_first_frame(src, info.width, info.height),
                          np.uint8).reshape(info.height, info.width, 3)
    # The unrotated picture, turned by hand: proves the sign (clockwise) independently.
    upright = next(iter_frames(probe(media.plain(media_dir)), 0, 1)).rgb
    assert _mean_diff(np.rot90(upright, k=-clockwise // 90), shown) < 1
    for backend in ("decord", "pyav"):
        with open_reader(info, 0, 1, backend=backend) as reader:
            first = next(iter(reader)).rgb
        assert first.shape == shown.shape
        assert _mean_diff(first, shown) < 3, backend
        assert _mean_diff(first, np.rot90(shown, k=2)) > 20, backend  # a half turn is visible


def test_decord_rotation_is_applied_once(media_dir: Path) -> None:
    """decord rotates by itself; we turn its frames only when their shape shows it did not."""
    from workers.media.decode import _DecordReader

    info = probe(media.rotated(media_dir, 90))
    assert _DecordReader._missing_turns(info, (320, 180, 3)) == 0  # already displayed upright
    assert _DecordReader._missing_turns(info, (180, 320, 3)) == 1  # still coded: turn once


# --- timestamps --------------------------------------------------------------------------------


def test_vfr_pts_match_ffprobe(media_dir: Path) -> None:
    src = media.vfr(media_dir)
    expected = media.frame_pts_times(src)
    deltas = np.round(np.diff(expected), 4)
    assert len(set(deltas)) > 1, "fixture is not variable frame rate"
    info = probe(src)
    for backend in ("decord", "pyav"):
        with open_reader(info, backend=backend) as reader:
            got = [f.pts for f in reader]
        assert got == pytest.approx(expected, abs=1e-4), backend


def test_pts_keep_the_source_clock(media_dir: Path) -> None:
    src = media.ts_offset(media_dir)
    got = [f.pts for f in iter_frames(probe(src))]
    assert got == pytest.approx(media.frame_pts_times(src), abs=1e-4)


# --- damaged input -----------------------------------------------------------------------------


def test_truncated_file_yields_what_decodes(media_dir: Path) -> None:
    info = probe(media.truncated_mp4(media_dir))
    assert info.frames_expected == 30
    with open_reader(info) as reader:
        frames = list(reader)
    assert 0 < len(frames) < 30
    assert [f.index for f in frames] == list(range(len(frames)))
    assert reader.warning and "30" in reader.warning
    # A chunk planned past the decodable end is empty, not an error.
    assert list(iter_frames(info, start=25, count=5)) == []


def test_undecodable_file_raises_input_error(media_dir: Path) -> None:
    path = media.undecodable(media_dir)
    info = probe(path)  # the header is intact
    with pytest.raises(InputError, match="no video frame could be decoded") as caught:
        open_reader(info)
    assert str(path) in str(caught.value)


# --- start / count -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "backend"), [("plain", "decord"), ("plain", "pyav"),
                                               ("ts_offset", "pyav"), ("vp9_webm", None)])
def test_start_and_count_select_the_same_frames(name: str, backend: str | None,
                                                media_dir: Path) -> None:
    info = probe(GOOD[name][0](media_dir))
    with open_reader(info, backend=backend) as reader:  # type: ignore[arg-type]
        full = list(reader)
    start, count = (10, 5) if len(full) >= 15 else (4, 3)
    with open_reader(info, start, count, backend=backend) as reader:  # type: ignore[arg-type]
        part = list(reader)
    assert [f.index for f in part] == list(range(start, start + count))
    for got, want in zip(part, full[start:start + count]):
        assert got.pts == pytest.approx(want.pts, abs=1e-6)
        assert np.array_equal(got.rgb, want.rgb)
    tail = list(iter_frames(info, start=len(full) - 2))  # count=None: to the end
    assert [f.index for f in tail] == [len(full) - 2, len(full) - 1]


def test_start_past_end_and_bad_arguments(media_dir: Path) -> None:
    info = probe(media.plain(media_dir))
    assert list(iter_frames(info, start=20)) == []
    assert list(iter_frames(info, start=3, count=0)) == []
    with pytest.raises(ValueError):
        open_reader(info, start=-1)


def test_real_clip_with_audio(media_dir: Path) -> None:
    info = probe(media.clip(media_dir, 8))
    assert info.has_audio and (info.width, info.height) == (1280, 720)
    with open_reader(info) as reader:
        frames = list(reader)
    assert reader.backend == "pyav" and len(frames) == 8
    assert frames[1].pts == pytest.approx(1001 / 30000, abs=1e-4)


def test_decoder_order_can_be_turned_round(media_dir: Path) -> None:
    with open_reader(probe(media.plain(media_dir)), first="decord") as reader:
        assert reader.backend == "decord" and len(list(reader)) == 20
    # decord's FFmpeg 4.1 has no AV1 decoder: PyAV takes over.
    with open_reader(probe(media.av1(media_dir)), first="decord") as reader:
        assert reader.backend == "pyav" and len(list(reader)) == 8


# --- DecodeThread ------------------------------------------------------------------------------


def test_decode_thread_yields_the_same_frames(media_dir: Path) -> None:
    info = probe(media.plain(media_dir))
    direct = list(iter_frames(info))
    with DecodeThread(open_reader(info), maxsize=2) as thread:
        threaded = list(thread)
    assert [f.index for f in threaded] == [f.index for f in direct]
    assert all(np.array_equal(a.rgb, b.rgb) and a.pts == b.pts for a, b in zip(threaded, direct))
    assert thread.frames_decoded == len(direct) and thread.busy_seconds > 0


def test_decode_thread_reraises_in_the_consumer() -> None:
    def failing() -> Iterator[Frame]:
        for i in range(2):
            yield Frame(i, i / 30, np.zeros((2, 2, 3), np.uint8))
        raise InputError("clip.mp4: boom")

    got = []
    with pytest.raises(InputError, match="boom"), DecodeThread(failing()) as thread:
        for frame in thread:
            got.append(frame.index)
    assert got == [0, 1]


def test_decode_thread_busy_time_excludes_a_slow_consumer() -> None:
    frames = [Frame(i, 0.0, np.zeros((1, 1, 3), np.uint8)) for i in range(4)]
    with DecodeThread(frames, maxsize=1) as thread:
        for _ in thread:
            time.sleep(0.05)
    assert thread.busy_seconds < 0.05


def test_decode_thread_close_stops_a_blocked_producer() -> None:
    released = threading.Event()

    def endless() -> Iterator[Frame]:
        try:
            i = 0
            while True:
                yield Frame(i, 0.0, np.zeros((1, 1, 3), np.uint8))
                i += 1
        finally:
            released.set()  # the reader's cleanup runs when the thread stops

    thread = DecodeThread(endless(), maxsize=1)
    assert next(iter(thread)).index == 0
    started = time.perf_counter()
    thread.close()
    assert time.perf_counter() - started < 2
    assert released.wait(2) and not thread._thread.is_alive()
    assert list(thread) == []  # iterating a closed thread ends instead of hanging
