"""In the pipeline (segment_video, the tiny model, a real clip): each of SAM 3's post-processing
steps changes masks.json. The detector's output is crafted on frame 0 (a forward hook): one
detection, a duplicate of it one row lower, and in both a 2x2 hole and a 2x2 speck. The same run
with transformers' kernel slot emptied (what it does without a kernel) is the control.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from transformers.models.sam3_video import modeling_sam3_video as msv

from pipeline.core.specs import VideoOptions
from pipeline.core.storage import LocalStorage
from workers.chunks.video_steps import segment_video
from workers.media import rle

HOLE = (slice(20, 22), slice(20, 22))  # low-resolution rows, columns
SPECK = (slice(50, 52), slice(50, 52))


def _crafted_detections(module, args, kwargs, output):
    queries, height, width = output.pred_masks.shape[1:]
    assert (height, width) == (64, 64) and queries >= 2
    logits = torch.full_like(output.pred_logits, -1e4)  # every other query scores exactly 0
    logits[:, 0], logits[:, 1] = 5.0, 4.0
    masks = torch.full_like(output.pred_masks, -5.0)
    masks[:, 0, 10:40, 10:40] = 5.0
    masks[:, 1, 11:41, 10:40] = 5.0  # the duplicate: IoU 0.94 with detection 0
    masks[:, :2][(..., *HOLE)] = -5.0
    masks[:, :2][(..., *SPECK)] = 5.0
    boxes = output.pred_boxes.clone()
    boxes[:, 1] = boxes[:, 0]
    output.pred_logits, output.pred_masks, output.pred_boxes = logits, masks, boxes
    return output


def _frame0(tiny, clip, out_dir, steps_on: bool) -> tuple[dict, list[dict]]:
    installed = msv.cv_utils_kernel
    hook = tiny.model.detector_model.register_forward_hook(_crafted_detections, with_kwargs=True)
    try:
        if not steps_on:
            msv.cv_utils_kernel = False  # transformers' own state when no kernel could be loaded
        segment_video(clip, tiny, VideoOptions(outputs=["rle"], max_frames=2), ["dog"], LocalStorage(out_dir))
    finally:
        hook.remove()
        msv.cv_utils_kernel = installed
    doc = json.loads((out_dir / "masks.json").read_text())
    return doc, doc["frames"][0]["objects"]


def _low_res_box(region: tuple[slice, slice], height: int, width: int, margin: int = 0) -> tuple[slice, slice]:
    """The video pixels between the centres of a low-resolution (64x64) region's first and last
    pixels, widened by ``margin`` low-resolution pixels."""
    def span(cells: slice, size: int) -> slice:
        return slice(max(0, int((cells.start - margin + 0.5) * size / 64)),
                     int((cells.stop + margin - 0.5) * size / 64) + 1)

    rows, cols = region
    return span(rows, height), span(cols, width)


@pytest.fixture(scope="module")
def runs(tiny, dog24, tmp_path_factory):
    on = _frame0(tiny, dog24, tmp_path_factory.mktemp("steps-on"), steps_on=True)
    off = _frame0(tiny, dog24, tmp_path_factory.mktemp("steps-off"), steps_on=False)
    return on, off


def test_masks_json_records_the_steps(runs):
    (doc, _), _ = runs
    assert doc["params"]["postprocess"] == {"nms": 0.1, "fill_hole_area": 16}


def test_the_duplicate_detection_is_suppressed(runs):
    (_, on), (_, off) = runs
    assert len(off) == 2  # without NMS the duplicate becomes an object of its own
    assert len(on) == 1


def _union(objects: list[dict]) -> np.ndarray:
    return np.logical_or.reduce([rle.decode(o["segmentation"]) for o in objects])


def test_the_hole_is_filled_and_the_speck_removed(runs):
    (_, on), (_, off) = runs
    with_steps, without = _union(on), _union(off)
    height, width = with_steps.shape
    hole, speck = _low_res_box(HOLE, height, width), _low_res_box(SPECK, height, width)
    assert not without[hole].any() and with_steps[hole].all()
    assert without[speck].all() and not with_steps[speck].any()
    # Nothing else changes but the duplicate's extra low-resolution row (40), which its own object
    # held without NMS: upsampling spreads each change over its low-resolution neighbours.
    changed = with_steps != without
    for region in (HOLE, SPECK, (slice(40, 41), slice(10, 40))):
        changed[_low_res_box(region, height, width, margin=1)] = False
    assert not changed.any()
