"""SAM 3's mask NMS, hole filling and speck removal run after load_model, and equal Meta's reference.

The reference is Meta's own `sam3.perflib` (tests/meta_reference.py): its NMS (`generic_nms`, the
CPU path here) and its connected components (scikit-image on CPU). Random cases cover ties, empty
masks, one object, 64 objects, odd sizes and masks touching the border.
"""

from __future__ import annotations

import importlib.machinery
import sys
import types

import numpy as np
import pytest
import torch
from transformers.models.sam3_video import modeling_sam3_video as msv

from pipeline.core.errors import ProcessingError
from tests.meta_reference import MetaCvUtils, connected_components, nms
from workers.model import cv_utils
from workers.model.loading import load_model

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
OURS = cv_utils.OfflineCvUtils()


@pytest.fixture
def kernel_slot():
    """Put back whatever transformers' kernel slot held before the test."""
    before = msv.cv_utils_kernel
    yield
    msv.cv_utils_kernel = before


# --- after load_model, transformers' own functions run the three steps --------------------------

@pytest.mark.parametrize("device", DEVICES)
def test_load_model_makes_transformers_suppress_a_duplicate_fill_a_hole_and_remove_a_speck(
        tiny_model_dir, device, kernel_slot):
    msv.cv_utils_kernel = None  # as in a fresh process: transformers has not looked for a kernel yet
    loaded = load_model(str(tiny_model_dir), device)
    dev = loaded.device
    assert loaded.postprocess.params() == {"nms": 0.1, "fill_hole_area": 16}

    masks = torch.full((3, 64, 64), -1.0, device=dev)
    masks[0, 10:40, 10:40] = 1.0
    masks[1, 11:41, 10:40] = 1.0  # the same object one row lower: IoU 0.94
    masks[2, 45:60, 45:60] = 1.0
    probs = torch.tensor([0.8, 0.9, 0.5], device=dev)
    keep = msv.nms_masks(probs, masks, prob_threshold=0.0, iou_threshold=loaded.model.det_nms_thresh)
    assert keep.tolist() == [False, True, True]

    scores = torch.full((1, 1, 64, 64), -2.0, device=dev)
    scores[..., 8:40, 8:40] = 3.0
    scores[..., 20:22, 20:22] = -2.0  # a 2x2 hole
    scores[..., 50:52, 50:52] = 3.0  # a 2x2 speck
    out = msv.fill_holes_in_mask_scores(scores, max_area=loaded.model.fill_hole_area)
    assert (out[..., 20:22, 20:22] > 0).all()
    assert (out[..., 50:52, 50:52] <= 0).all()
    untouched = torch.ones_like(scores, dtype=torch.bool)
    untouched[..., 20:22, 20:22] = False
    untouched[..., 50:52, 50:52] = False
    assert torch.equal(out[untouched], scores[untouched])


def test_load_fails_when_a_step_would_not_run(tiny_model_dir, monkeypatch, kernel_slot):
    # An NMS that keeps everything is what transformers does without a kernel: the load must refuse.
    monkeypatch.setattr(cv_utils.OfflineCvUtils, "generic_nms",
                        lambda self, ious, scores, thr, use_iou_matrix=True: torch.arange(len(scores)))
    with pytest.raises(ProcessingError, match="mask NMS kept"):
        load_model(str(tiny_model_dir), "cpu")


def _fake_kernels_package(monkeypatch, get_kernel) -> None:
    module = types.ModuleType("kernels")
    module.__spec__ = importlib.machinery.ModuleSpec("kernels", None)
    module.get_kernel = get_kernel
    monkeypatch.setitem(sys.modules, "kernels", module)


def test_a_working_hub_kernel_is_preferred(monkeypatch, tiny, kernel_slot):
    # Meta's reference stands in for the hub build: a kernel object that works.
    _fake_kernels_package(monkeypatch, lambda repo, version: MetaCvUtils())
    chosen = cv_utils.install(tiny.model, tiny.device)
    assert chosen.backend == f"hub kernel {cv_utils.HUB_KERNEL}"
    assert isinstance(msv.cv_utils_kernel, MetaCvUtils)


def test_a_hub_kernel_that_fails_gives_way_to_ours(monkeypatch, tiny, kernel_slot, caplog):
    def offline(repo, version):
        raise OSError("cannot reach huggingface.co")

    _fake_kernels_package(monkeypatch, offline)
    with caplog.at_level("INFO", logger="workers.model.cv_utils"):
        chosen = cv_utils.install(tiny.model, tiny.device)
    assert chosen.backend == cv_utils.OfflineCvUtils.name
    assert isinstance(msv.cv_utils_kernel, cv_utils.OfflineCvUtils)
    assert "cannot reach huggingface.co" in caplog.text


# --- equality with Meta's reference on random cases ---------------------------------------------

def _blobs(rng: np.random.Generator, batch: int, height: int, width: int) -> np.ndarray:
    """Score maps with blobs, holes and specks of all sizes: smooth noise at a random scale plus
    pixel noise; some planes empty, some full."""
    scale = int(rng.integers(1, 9))
    coarse = rng.standard_normal((batch, -(-height // scale), -(-width // scale)))
    smooth = np.repeat(np.repeat(coarse, scale, axis=1), scale, axis=2)[:, :height, :width]
    scores = smooth + rng.uniform(0, 1.5) * rng.standard_normal((batch, height, width)) + rng.uniform(-1.5, 1.5)
    kind = rng.random(batch)
    scores[kind < 0.05] = -1.0  # empty
    scores[(kind >= 0.05) & (kind < 0.08)] = 1.0  # full: touches every border
    return scores.astype(np.float32)


def _case_size(rng: np.random.Generator) -> tuple[int, int, int]:
    batch = int(rng.choice([1, 1, 2, 3, 4, 8, 16, 64]))
    height, width = (int(v) for v in rng.integers(1, 50, size=2))
    return batch, height, width


def test_connected_components_equal_meta_reference():
    rng = np.random.default_rng(17)
    cases = components = 0
    for _ in range(2000):
        batch, height, width = _case_size(rng)
        if batch == 64:
            height, width = min(height, 24), min(width, 24)  # the reference labels plane by plane in Python
        mask = torch.from_numpy(_blobs(rng, batch, height, width) > 0).to(torch.uint8).unsqueeze(1)
        labels, counts = OURS.cc_2d(mask, get_counts=True)
        ref_labels, ref_counts = connected_components.connected_components(mask)
        assert labels.shape == counts.shape == mask.shape
        assert torch.equal(counts.long(), ref_counts.long()), (batch, height, width)
        assert torch.equal(labels.long(), ref_labels.long()), (batch, height, width)
        cases += 1
        components += int(ref_labels.amax(dim=(1, 2, 3)).sum())
    assert cases == 2000 and components > 10_000  # many components, not mostly empty planes


def _ious(rng: np.random.Generator, n: int) -> torch.Tensor:
    if rng.random() < 0.5:  # IoUs of real masks (symmetric)
        size = int(rng.integers(8, 40))
        flat = (_blobs(rng, n, size, size) > 0).reshape(n, size * size).astype(np.int64)
        # transformers' mask_iou with the counts from an integer product: the same float division
        inter = flat @ flat.T
        area = flat.sum(axis=1)
        union = area[:, None] + area[None, :] - inter
        return torch.from_numpy(inter).float() / torch.from_numpy(union).float().clamp(min=1)
    ious = torch.from_numpy(rng.random((n, n)).astype(np.float32))  # any matrix, rows and columns differ
    ious[torch.from_numpy(rng.random((n, n)) < 0.1)] = 0.1  # exactly at the usual threshold: kept
    return ious


def _scores(rng: np.random.Generator, n: int, ties: bool) -> torch.Tensor:
    values = rng.choice(np.float32([0.3, 0.5, 0.9]), n) if ties else rng.random(n)
    return torch.from_numpy(values.astype(np.float32))


def _in_our_order(scores: torch.Tensor) -> torch.Tensor:
    """Distinct scores in the order ours ranks ``scores``: on ties, the lower index first."""
    order = torch.sort(scores, descending=True, stable=True).indices
    ranked = torch.empty_like(scores)
    ranked[order] = torch.arange(len(scores), 0, -1, dtype=scores.dtype)
    return ranked


def test_nms_keeps_what_meta_reference_keeps():
    rng = np.random.default_rng(170)
    suppressed = tie_cases = 0
    for case in range(3000):
        n = int(rng.choice([0, 1, 2, 3, 5, 8, 16, 20, 33, 64]))
        ties = case % 3 == 0
        ious, scores = _ious(rng, n), _scores(rng, n, ties)
        threshold = float(rng.choice([0.0, 0.1, 0.1, 0.5, 0.7, rng.random()]))
        kept = OURS.generic_nms(ious, scores, threshold, use_iou_matrix=True)
        assert kept.dtype == torch.int64
        if ties:
            # Meta's CPU path orders by numpy's argsort, whose order on equal scores is unspecified
            # (it differs between CPUs); its triton (GPU) path and ours take the lower index first.
            # Given that order as distinct scores, the reference must keep the same detections.
            tie_cases += int(len(scores.unique()) < n)
            reference = nms.generic_nms_cpu(ious, _in_our_order(scores), threshold)
        else:
            reference = nms.generic_nms_cpu(ious, scores, threshold)
        assert kept.tolist() == reference.tolist(), (case, n, threshold)
        suppressed += n - len(kept)
    assert suppressed > 10_000 and tie_cases > 700


def _with_kernel(kernel, fn, *args, **kwargs):
    msv.cv_utils_kernel = kernel
    return fn(*args, **kwargs)


def test_transformers_fill_holes_gives_the_same_tensor_with_either_backend(kernel_slot):
    rng = np.random.default_rng(1717)
    changed = 0
    for _ in range(500):
        batch, height, width = _case_size(rng)
        scores = torch.from_numpy(_blobs(rng, batch, height, width)).unsqueeze(1)
        max_area = int(rng.choice([1, 4, 16, 16, 50]))
        ours = _with_kernel(OURS, msv.fill_holes_in_mask_scores, scores, max_area=max_area)
        meta = _with_kernel(MetaCvUtils(), msv.fill_holes_in_mask_scores, scores, max_area=max_area)
        assert torch.equal(ours, meta), (batch, height, width, max_area)
        changed += int(not torch.equal(ours, scores))
    assert changed > 250  # the step does something on most cases


def test_transformers_nms_masks_keeps_the_same_detections_with_either_backend(kernel_slot):
    rng = np.random.default_rng(171717)
    dropped = 0
    for _ in range(500):
        n, size = int(rng.choice([1, 2, 5, 20, 64])), int(rng.integers(8, 33))
        masks = torch.from_numpy(_blobs(rng, n, size, size))
        probs = torch.from_numpy(rng.random(n).astype(np.float32))
        args = dict(prob_threshold=float(rng.choice([0.0, 0.5])), iou_threshold=float(rng.choice([0.1, 0.5])))
        ours = _with_kernel(OURS, msv.nms_masks, probs, masks, **args)
        meta = _with_kernel(MetaCvUtils(), msv.nms_masks, probs, masks, **args)
        assert torch.equal(ours, meta)
        dropped += int((probs > args["prob_threshold"]).sum() - ours.sum())
    assert dropped > 800
