"""One video end to end, with real ffmpeg, decord and the real SAM 3 architecture (tiny weights)."""

from __future__ import annotations

import json
from fractions import Fraction

import numpy as np
import pytest
from scipy import ndimage

from pipeline.core.specs import VideoOptions
from pipeline.core.storage import LocalStorage
from tests import ffprobe_util as fp
from tests import media
from tests.guards import assert_found_objects, assert_not_all_black
from workers.chunks.video_steps import segment_video
from workers.media import rle
from workers.media.palette import color_for


@pytest.fixture(scope="module")
def dog_run(tiny, dog24, tmp_path_factory):
    out = tmp_path_factory.mktemp("dog")
    result = segment_video(dog24, tiny, VideoOptions(outputs=["overlay", "mask", "rle"]), ["dog"],
                           LocalStorage(out))
    doc = json.loads((out / "masks.json").read_text())
    return out, result, doc


def test_outputs_match_input_geometry_timing_and_audio(dog_run, dog24):
    out, result, doc = dog_run
    src = fp.video_stream(dog24)
    for name in ("overlay", "mask"):
        got = fp.video_stream(out / f"{name}.mp4")
        assert int(got["nb_read_frames"]) == int(src["nb_read_frames"]) == 24
        assert (got["width"], got["height"]) == (src["width"], src["height"]) == (1280, 720)
        assert fp.fps(got) == fp.fps(src) == Fraction(30000, 1001)
        assert abs(fp.duration(out / f"{name}.mp4") - fp.duration(dog24)) < 1 / 29.97 + 1e-3
        assert fp.has_audio(out / f"{name}.mp4")
    assert result.audio == "copy"
    assert set(result.outputs) == {"masks", "overlay", "mask"}
    assert not any(p.name.endswith(".partial") for p in out.iterdir())


def test_masks_json_document(dog_run):
    _, result, doc = dog_run
    assert doc["schema_version"] == 2  # 2: objects[].prompt may be a visual prompt (README, masks.json)
    assert doc["video"]["width"] == 1280 and doc["video"]["height"] == 720
    assert doc["video"]["fps_rational"] == "30000/1001" and doc["video"]["num_frames"] == 24
    assert doc["video"]["source_frames_expected"] == 24 and doc["video"]["rotation"] == 0
    assert doc["model"]["tiny_random"] is True and doc["prompts"] == ["dog"]
    assert [f["frame"] for f in doc["frames"]] == list(range(24))
    assert all(abs(f["pts"] - i * 1001 / 30000) < 1e-3 for i, f in enumerate(doc["frames"]))
    ids = {o["id"]: o for o in doc["objects"]}
    assert len(ids) >= 2
    seen: dict[int, list[int]] = {}
    for f in doc["frames"]:
        for obj in f["objects"]:
            mask = rle.decode(obj["segmentation"])
            assert mask.shape == (720, 1280) and mask.any()
            assert 0.0 <= obj["score"] <= 1.0
            ys, xs = np.nonzero(mask)
            assert obj["bbox"] == pytest.approx([xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1])
            seen.setdefault(obj["id"], []).append(f["frame"])
    for obj_id, frames in seen.items():
        assert ids[obj_id]["first_frame"] == frames[0] and ids[obj_id]["last_frame"] == frames[-1]
        assert ids[obj_id]["prompt"] == "dog"


def _interior(mask: np.ndarray) -> np.ndarray:
    # Chroma subsampling and compression smear edges: judge colors a few pixels inside.
    return ndimage.binary_erosion(mask, iterations=4)


def test_overlay_colors_sit_where_the_rle_says(dog_run, dog24):
    out, _, doc = dog_run
    source = fp.frames_rgb(dog24, 1280, 720).astype(np.float32)
    overlay = fp.frames_rgb(out / "overlay.mp4", 1280, 720).astype(np.float32)
    alpha = doc["params"]["mask_opacity"]
    checked = 0
    for f in doc["frames"]:
        i = f["frame"]
        union = np.zeros((720, 1280), dtype=bool)
        for obj in f["objects"]:
            mask = rle.decode(obj["segmentation"])
            union |= mask
            inside = _interior(mask)
            if inside.sum() < 200:
                continue
            implied = (overlay[i][inside] - (1 - alpha) * source[i][inside]) / alpha
            assert np.abs(implied.mean(axis=0) - np.array(color_for(obj["id"]))).max() < 12, (i, obj["id"])
            checked += 1
        outside = ~ndimage.binary_dilation(union, iterations=4)
        # Re-encoding costs ~3-4 levels on average; a wrongly placed mask costs tens.
        assert np.abs(overlay[i][outside] - source[i][outside]).mean() < 6.0, i
    assert checked >= 24


def test_mask_video_white_pixels_match_rle_union(dog_run):
    out, _, doc = dog_run
    assert_found_objects(doc)  # else every frame takes the all-black branch below
    video = fp.frames_rgb(out / "mask.mp4", 1280, 720)
    for f in doc["frames"]:
        union = np.zeros((720, 1280), dtype=bool)
        for obj in f["objects"]:
            union |= rle.decode(obj["segmentation"])
        white = video[f["frame"]].mean(axis=2) > 127
        if union.any():
            iou = (white & union).sum() / (white | union).sum()
            assert iou > 0.97, (f["frame"], iou)
        else:
            assert not white.any()


def test_no_apply_mask_writes_mask_video_and_no_audio_when_source_has_none(tiny, media_dir, tmp_path):
    clip = media.clip(media_dir, 16, source=media.BEDROOM)
    result = segment_video(clip, tiny, VideoOptions(apply_mask=False), ["child", "bed"],
                           LocalStorage(tmp_path))
    assert set(result.outputs) == {"masks", "mask"}
    assert not (tmp_path / "overlay.mp4").exists()
    assert not fp.has_audio(tmp_path / "mask.mp4")
    assert int(fp.video_stream(tmp_path / "mask.mp4")["nb_read_frames"]) == 16
    doc = json.loads((tmp_path / "masks.json").read_text())
    assert doc["prompts"] == ["child", "bed"]
    assert_found_objects(doc)  # an empty set of prompts is a subset of anything
    assert {o["prompt"] for o in doc["objects"]} <= {"child", "bed"}
    assert_not_all_black(tmp_path / "mask.mp4", doc["video"]["encoded_width"], doc["video"]["encoded_height"])


def test_max_frames_limits_frames_and_audio(tiny, dog24, tmp_path):
    result = segment_video(dog24, tiny, VideoOptions(max_frames=5), ["dog"], LocalStorage(tmp_path))
    assert result.num_frames == 5
    got = fp.video_stream(tmp_path / "overlay.mp4")
    assert int(got["nb_read_frames"]) == 5
    audio = next(s for s in fp.streams(tmp_path / "overlay.mp4")["streams"] if s["codec_type"] == "audio")
    assert float(audio["duration"]) < 5 / 29.97 + 0.1


def test_reaching_sam3s_object_cap_is_one_warning_of_the_video(tiny, dog24, tmp_path, monkeypatch):
    """transformers logs "hitting max_num_objects" on every frame into a log nobody reads (and load_model
    silences it): the video's result says it once instead, however many chunks hit it."""
    opts = VideoOptions(max_frames=6, chunk_frames=3, detection_threshold=0.0)
    monkeypatch.setattr(tiny.model, "max_num_objects", 1000)
    below = segment_video(dog24, tiny, opts, ["dog"], LocalStorage(tmp_path / "below"))
    assert_found_objects(json.loads((tmp_path / "below" / "masks.json").read_text()))
    assert not any("max_num_objects" in w for w in below.warnings)
    monkeypatch.setattr(tiny.model, "max_num_objects", 1)
    capped = segment_video(dog24, tiny, opts, ["dog"], LocalStorage(tmp_path / "capped"))
    assert capped.num_chunks == 2
    assert [w for w in capped.warnings if "max_num_objects" in w] == [
        "1 objects tracked at once, SAM 3's limit (max_num_objects): objects found after that were not "
        "tracked; split the prompts over several runs or raise the limit in the model config"]
