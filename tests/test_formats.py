"""Unusual but valid inputs succeed with every decodable frame, in the displayed orientation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.core.specs import VideoOptions
from pipeline.core.storage import LocalStorage
from tests import ffprobe_util as fp
from tests import media
from tests.guards import assert_found_objects
from workers.chunks.video_steps import segment_video
from workers.media import rle


def _segment(tiny, path, out, **kw):
    result = segment_video(path, tiny, VideoOptions(outputs=["overlay", "mask"], **kw), ["thing"],
                           LocalStorage(out))
    return result, json.loads((out / "masks.json").read_text())


def _check_rle_size(doc, height, width):
    assert_found_objects(doc)  # else the loop below checks nothing
    for f in doc["frames"]:
        for obj in f["objects"]:
            assert rle.decode(obj["segmentation"]).shape == (height, width)


@pytest.mark.parametrize("make", [media.one_frame, media.vp9_webm, media.av1, media.hevc_10bit],
                         ids=["one-frame", "vp9-webm", "av1", "hevc-10bit"])
def test_codecs_and_lengths_succeed_with_every_frame(make, tiny, media_dir, tmp_path):
    src = make(media_dir)
    expected = int(fp.video_stream(src)["nb_read_frames"])
    info = fp.video_stream(src)
    result, doc = _segment(tiny, src, tmp_path)
    assert result.num_frames == expected == doc["video"]["num_frames"]
    out = fp.video_stream(tmp_path / "overlay.mp4")
    assert int(out["nb_read_frames"]) == expected
    assert (out["width"], out["height"]) == (info["width"], info["height"])
    _check_rle_size(doc, info["height"], info["width"])


def test_odd_size_is_padded_to_even_and_recorded(tiny, media_dir, tmp_path):
    src = media.odd_size(media_dir)
    result, doc = _segment(tiny, src, tmp_path)
    video = doc["video"]
    assert (video["width"], video["height"]) == (321, 241)
    assert (video["encoded_width"], video["encoded_height"]) == (322, 242)
    out = fp.video_stream(tmp_path / "overlay.mp4")
    assert (out["width"], out["height"]) == (322, 242)
    assert int(out["nb_read_frames"]) == result.num_frames == int(fp.video_stream(src)["nb_read_frames"])
    _check_rle_size(doc, 241, 321)
    assert fp.has_audio(tmp_path / "overlay.mp4")


def test_rotated_phone_video_comes_out_in_displayed_orientation(tiny, media_dir, tmp_path):
    src = media.rotated(media_dir)
    result, doc = _segment(tiny, src, tmp_path, apply_mask=False)
    h, w = doc["video"]["height"], doc["video"]["width"]
    assert doc["video"]["rotation"] in (90, 270) and h > w
    out = fp.video_stream(tmp_path / "overlay.mp4")
    assert (out["width"], out["height"]) == (w, h)
    _check_rle_size(doc, h, w)
    # The overlay's pixels outside masks equal the autorotated source frame.
    src_frames = fp.frames_rgb(src, w, h).astype(np.int16)
    got = fp.frames_rgb(tmp_path / "overlay.mp4", w, h).astype(np.int16)
    union = np.zeros((h, w), bool)
    for obj in doc["frames"][0]["objects"]:
        union |= rle.decode(obj["segmentation"])
    assert np.abs(got[0][~union] - src_frames[0][~union]).mean() < 6


def test_variable_frame_rate_keeps_source_timestamps(tiny, media_dir, tmp_path):
    src = media.vfr(media_dir)
    source_pts = media.frame_pts_times(src)
    assert len(set(np.round(np.diff(source_pts), 4))) > 1, "fixture must really be VFR"
    result, doc = _segment(tiny, src, tmp_path)
    assert doc["video"]["variable_frame_rate"] is True
    assert [f["pts"] for f in doc["frames"]] == pytest.approx(source_pts, abs=1e-3)
    out_pts = media.frame_pts_times(tmp_path / "overlay.mp4")
    assert len(out_pts) == len(source_pts)
    assert np.diff(out_pts) == pytest.approx(np.diff(source_pts), abs=2e-3)


def test_truncated_mp4_processes_what_decodes_and_warns(tiny, media_dir, tmp_path):
    src = media.truncated_mp4(media_dir)
    result, doc = _segment(tiny, src, tmp_path)
    assert doc["video"]["source_frames_expected"] > doc["video"]["num_frames"] == result.num_frames > 0
    assert any("only" in w and "decoded" in w for w in result.warnings)
    assert int(fp.video_stream(tmp_path / "overlay.mp4")["nb_read_frames"]) == result.num_frames
