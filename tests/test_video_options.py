"""Per-video options start_frame and detection_threshold, end to end: real ffmpeg, PyAV and decord,
the tiny SAM 3 model. Pixels, timestamps and audio are checked with the ffmpeg CLIs, not our decoder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pipeline.core.errors import InputError
from pipeline.core.specs import VideoOptions, options_from_flags
from pipeline.core.storage import LocalStorage
from tests import ffprobe_util as fp
from tests import media
from tests.guards import assert_found_objects
from workers.chunks.video_steps import segment_video
from workers.model.frame_features import step_model
from workers.model.tracker import detection_thresholds

N, W, H, FPS = 48, 320, 180, 30  # media.hue_beep
S = 13  # between keyframes (every 12) and off the encode grid: the decoder must seek, then drop


def mean_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float32) - b.astype(np.float32)).mean())


def audio_samples(path: Path) -> np.ndarray:
    raw = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:a:0", "-f", "f32le", "-ac", "1",
                          "-ar", "48000", "-"], capture_output=True, check=True).stdout
    return np.frombuffer(raw, dtype=np.float32)


def options(**kw) -> VideoOptions:
    return VideoOptions(**kw)


def segment(source, loaded, opts: VideoOptions, storage, **kw):
    return segment_video(source, loaded, opts, ["dog"], storage, **kw)


@pytest.fixture(scope="module")
def source(media_dir) -> Path:
    return media.hue_beep(media_dir)


@pytest.fixture(scope="module")
def source_frames(source) -> np.ndarray:
    frames = fp.frames_rgb(source, W, H)
    assert frames.shape[0] == N
    return frames


@pytest.fixture(scope="module")
def late(tiny, source, tmp_path_factory):
    """From frame S to the end. Opacity 0: the overlay is the source re-encoded, frame for frame."""
    out = tmp_path_factory.mktemp("late")
    result = segment(source, tiny, options(outputs=("overlay", "mask"), start_frame=S, mask_opacity=0.0),
                           LocalStorage(out))
    return out, result, json.loads((out / "masks.json").read_text())


# --- start_frame --------------------------------------------------------------------------------

def test_outputs_hold_the_frames_from_start_frame(late, source_frames):
    out, result, doc = late
    assert result.num_frames == doc["video"]["num_frames"] == N - S
    for name in ("overlay", "mask"):
        assert int(fp.video_stream(out / f"{name}.mp4")["nb_read_frames"]) == N - S, name
    video = fp.frames_rgb(out / "overlay.mp4", W, H)
    for k in range(N - S):
        right = mean_diff(video[k], source_frames[S + k])
        assert right < 4.0, (k, right)  # re-encoding costs a few levels
        for wrong in (S + k - 1, S + k + 1):  # a neighbour differs ~18: off by one shows
            if 0 <= wrong < N:
                assert mean_diff(video[k], source_frames[wrong]) > 3 * right + 6, (k, wrong)
    assert mean_diff(video[0], source_frames[0]) > 50


def test_output_timing_starts_at_zero_and_masks_json_keeps_source_frames_and_times(late, source):
    out, _, doc = late
    source_pts = media.frame_pts_times(source)
    assert media.frame_pts_times(out / "overlay.mp4") == pytest.approx([k / FPS for k in range(N - S)], abs=1e-3)
    assert fp.duration(out / "overlay.mp4") == pytest.approx((N - S) / FPS, abs=2e-3)
    assert [f["frame"] for f in doc["frames"]] == list(range(S, N))
    assert [f["pts"] for f in doc["frames"]] == pytest.approx(source_pts[S:], abs=1e-5)
    assert doc["params"]["start_frame"] == S and doc["params"]["max_frames"] is None
    assert doc["objects"] and all(S <= o["first_frame"] <= o["last_frame"] < N for o in doc["objects"])


def test_audio_is_cut_to_the_processed_frames_and_stays_in_sync(late, source):
    out, result, _ = late
    assert result.audio == "copy"
    for name in ("overlay", "mask"):
        audio = next(s for s in fp.streams(out / f"{name}.mp4")["streams"] if s["codec_type"] == "audio")
        assert float(audio["duration"]) == pytest.approx((N - S) / FPS, abs=0.03), name
    samples = audio_samples(out / "overlay.mp4")
    assert len(samples) / 48000 == pytest.approx((N - S) / FPS, abs=0.03)
    # The tone starts at BEEP_AT in the source; the output's 0 is source frame S.
    onset = int(np.argmax(np.abs(samples) > 0.05)) / 48000
    assert onset == pytest.approx(media.BEEP_AT - S / FPS, abs=0.003)


def test_audio_stays_in_sync_when_the_source_clock_starts_late(tiny, media_dir, tmp_path):
    source = media.hue_beep_ts(media_dir)
    streams = {s["codec_type"]: float(s["start_time"]) for s in fp.streams(source)["streams"]}
    assert streams["audio"] < streams["video"] - 0.015  # the case at hand: audio starts first
    result = segment(source, tiny, options(outputs=("overlay",), mask_opacity=0.0), LocalStorage(tmp_path))
    assert result.audio == "copy"
    samples = audio_samples(tmp_path / "overlay.mp4")
    assert len(samples) / 48000 == pytest.approx(N / FPS, abs=0.005)
    onset = int(np.argmax(np.abs(samples) > 0.05)) / 48000
    assert onset == pytest.approx(media.BEEP_AT, abs=0.003)  # was 21 ms late


def test_max_frames_counts_from_start_frame_with_decord(tiny, source, source_frames, tmp_path):
    result = segment(source, tiny, options(start_frame=30, max_frames=5, mask_opacity=0.0),
                     LocalStorage(tmp_path), decoder="decord")
    assert result.decoder == "decord" and result.num_frames == 5
    video = fp.frames_rgb(tmp_path / "overlay.mp4", W, H)
    assert video.shape[0] == 5
    assert all(mean_diff(video[k], source_frames[30 + k]) < 4.0 for k in range(5))
    doc = json.loads((tmp_path / "masks.json").read_text())
    assert [f["frame"] for f in doc["frames"]] == [30, 31, 32, 33, 34]
    samples = audio_samples(tmp_path / "overlay.mp4")
    assert len(samples) / 48000 == pytest.approx(5 / FPS, abs=0.03)


def test_start_frame_on_the_last_frame_gives_one_frame(tiny, source, source_frames, tmp_path):
    result = segment(source, tiny, options(start_frame=N - 1, mask_opacity=0.0), LocalStorage(tmp_path))
    assert result.num_frames == 1
    video = fp.frames_rgb(tmp_path / "overlay.mp4", W, H)
    assert video.shape[0] == 1 and mean_diff(video[0], source_frames[N - 1]) < 4.0


def test_variable_frame_rate_keeps_its_rhythm_from_start_frame(tiny, media_dir, tmp_path):
    clip = media.vfr(media_dir)  # 160x120, pts 0, 1, 2, 4, 5, 6, 8, ... (/30 s)
    source_pts = media.frame_pts_times(clip)
    start = 4
    segment(clip, tiny, options(start_frame=start, outputs=("mask",)), LocalStorage(tmp_path))
    got = media.frame_pts_times(tmp_path / "mask.mp4")
    assert got == pytest.approx([t - source_pts[start] for t in source_pts[start:]], abs=1e-3)
    doc = json.loads((tmp_path / "masks.json").read_text())
    assert doc["video"]["variable_frame_rate"] is True
    assert [f["pts"] for f in doc["frames"]] == pytest.approx(source_pts[start:], abs=1e-5)


@pytest.mark.parametrize("start", [N, N + 100])
def test_start_frame_past_the_end_is_an_input_error(start, tiny, source, tmp_path):
    with pytest.raises(InputError, match=f"start_frame {start} is past the end.*{N} frames"):
        segment(source, tiny, options(start_frame=start), LocalStorage(tmp_path))
    assert not (tmp_path / "masks.json").exists()


def test_start_frame_past_the_decodable_frames_of_a_truncated_file(tiny, media_dir, tmp_path):
    clip = media.truncated_mp4(media_dir)  # the header promises 30 frames; fewer decode
    with pytest.raises(InputError, match="start_frame 28 is past the end"):
        segment(clip, tiny, options(start_frame=28), LocalStorage(tmp_path))


@pytest.mark.parametrize("bad, words", [(dict(start_frame=-1), "--start-frame -1"),
                                        (dict(detection_threshold=1.5), "--detection-threshold 1.5"),
                                        (dict(detection_threshold=float("nan")), "--detection-threshold nan")])
def test_bad_values_are_refused(bad, words):
    with pytest.raises(InputError, match=words):
        options_from_flags(**bad)


# --- detection_threshold ------------------------------------------------------------------------

def test_the_new_object_threshold_moves_with_the_detection_threshold():
    sam3 = SimpleNamespace(score_threshold_detection=0.5, new_det_thresh=0.7)  # SAM 3's config values
    assert detection_thresholds(sam3, 0.3) == pytest.approx((0.3, 0.5))
    assert detection_thresholds(sam3, 0.5) == pytest.approx((0.5, 0.7))
    assert detection_thresholds(sam3, 0.9) == pytest.approx((0.9, 1.0))  # capped at 1


def test_a_step_model_has_the_videos_thresholds_and_leaves_the_shared_model_alone(tiny):
    model = tiny.model
    defaults = (model.score_threshold_detection, model.new_det_thresh)
    assert defaults == (model.config.score_threshold_detection, model.config.new_det_thresh)
    gap = model.config.new_det_thresh - model.config.score_threshold_detection
    mine = step_model(model, detection_thresholds(model.config, 0.4), None)
    assert (mine.score_threshold_detection, mine.new_det_thresh) == pytest.approx((0.4, min(1.0, 0.4 + gap)))
    assert (model.score_threshold_detection, model.new_det_thresh) == defaults
    assert mine.detector_model is model.detector_model  # the weights are shared, not copied
    unset = step_model(model, None, None)
    assert (unset.score_threshold_detection, unset.new_det_thresh) == defaults


@pytest.fixture(scope="module")
def dog(media_dir) -> Path:
    return media.small_dog(media_dir, 20)


def rle_run(tiny, clip, out: Path, **kw) -> dict:
    segment(clip, tiny, options(outputs=("rle",), **kw), LocalStorage(out))
    return json.loads((out / "masks.json").read_text())


def scores(doc: dict) -> list[float]:
    return [o["score"] for f in doc["frames"] for o in f["objects"]]


def test_detection_threshold_filters_and_never_leaks_into_the_next_video(tiny, dog, tmp_path, monkeypatch):
    model = tiny.model
    defaults = (model.score_threshold_detection, model.new_det_thresh)
    before = rle_run(tiny, dog, tmp_path / "before")
    found = sorted(set(scores(before)))
    assert len(found) >= 2, found  # two levels suffice (the upper passes); NMS leaves fewer near-duplicates
    assert before["params"]["detection_threshold"] is None

    # What each step's model object runs with (the thresholds live on the per-step copy, never on
    # the shared model: frame_features.step_model).
    from workers.model import frame_features
    from workers.model import tracker as tracker_module

    seen: list[tuple[float, float]] = []

    def recording(*args, **kwargs):
        mine = frame_features.step_model(*args, **kwargs)
        seen.append((mine.score_threshold_detection, mine.new_det_thresh))
        return mine

    monkeypatch.setattr(tracker_module, "step_model", recording)
    t = found[len(found) // 2]  # a threshold some objects pass and some do not
    mid = rle_run(tiny, dog, tmp_path / "mid", detection_threshold=t)
    monkeypatch.undo()
    assert seen and set(seen) == {detection_thresholds(model.config, t)}
    assert mid["params"]["detection_threshold"] == t
    assert scores(mid) and min(scores(mid)) >= t - 1e-6
    assert min(scores(before)) < t  # so the threshold did drop something

    none = rle_run(tiny, dog, tmp_path / "none", detection_threshold=1.0)
    assert none["objects"] == [] and all(f["objects"] == [] for f in none["frames"])

    assert (model.score_threshold_detection, model.new_det_thresh) == defaults
    after = rle_run(tiny, dog, tmp_path / "after")
    assert (tmp_path / "after" / "masks.json").read_bytes() == (tmp_path / "before" / "masks.json").read_bytes()
    assert after["objects"]


# --- through the task bodies (sam3v run: the embedded pipeline) ---------------------------------

def test_manifest_options_reach_the_chunked_tasks(tiny, tiny_model_dir, dog, tmp_path):
    start, frames = 5, 12
    probe_run = rle_run(tiny, dog, tmp_path / "probe", start_frame=start, max_frames=frames)
    found = sorted(set(scores(probe_run)))
    t = found[len(found) // 2]
    want = rle_run(tiny, dog, tmp_path / "want", start_frame=start, max_frames=frames, detection_threshold=t)
    assert_found_objects(want)  # the comparison below would hold if both runs found nothing

    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"id": "dog", "video": str(dog), "start_frame": start, "max_frames": frames,
                                    "chunk_frames": 5, "detection_threshold": t, "outputs": ["overlay", "rle"]})
                        + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM3V_")}
    done = subprocess.run([sys.executable, "-m", "sam3v.cli", "run", str(manifest), "--out", str(tmp_path / "out"),
                           "--prompt", "dog", "--model", str(tiny_model_dir)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "out" / done.stdout.strip().splitlines()[-1] / "dog"
    got = json.loads((out / "masks.json").read_text())
    assert [f["frame"] for f in got["frames"]] == list(range(start, start + frames))
    assert (got["params"]["start_frame"], got["params"]["detection_threshold"]) == (start, t)
    assert got["frames"] == want["frames"] and got["objects"] == want["objects"]
    assert int(fp.video_stream(out / "overlay.mp4")["nb_read_frames"]) == frames
