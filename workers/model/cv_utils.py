"""SAM 3's mask NMS and connected components for transformers' ``Sam3VideoModel``, offline, on any device.

transformers runs three steps of Meta's SAM 3 pipeline (mask NMS over new detections, hole filling
and speck removal) only through ``cv_utils_kernel``, a kernel that the optional ``kernels`` package
downloads from the hub; without it each step silently returns its input. ``install`` gives
transformers an object with the kernel's two operations, checks through transformers' own functions
that the steps change a crafted input, and raises if they cannot run: a worker must not start
writing masks that differ from SAM 3's without saying so.

The operations match Meta's reference (``sam3.perflib``; tests/test_cv_utils.py compares them on
thousands of random cases): greedy NMS over a pairwise IoU matrix, and 8-connected components with
each pixel's component size.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from transformers.models.sam3_video import modeling_sam3_video

from pipeline.core.errors import ProcessingError

log = logging.getLogger(__name__)

HUB_KERNEL = "kernels-community/cv-utils"

# 8-connectivity inside each (H, W) plane, none across planes: one label call for a whole batch.
_PLANE_NEIGHBOURS = np.zeros((3, 3, 3), dtype=bool)
_PLANE_NEIGHBOURS[1] = True


class OfflineCvUtils:
    """The two operations transformers asks of the cv-utils kernel, on torch (NMS) and SciPy
    (components); inputs may live on any device and results come back on it."""

    name = "sam3v offline (torch NMS, SciPy connected components)"

    def generic_nms(self, ious: torch.Tensor, scores: torch.Tensor, iou_threshold: float,
                    use_iou_matrix: bool = True) -> torch.Tensor:
        """Greedy NMS over a pairwise IoU matrix: the best-scoring detection left is kept, and every
        later one whose IoU with it (row: the kept one) is not <= ``iou_threshold`` is dropped.
        Returns the kept indices (int64, best score first). Equal scores: the lower index goes
        first (a stable sort, as Meta's GPU path does), on every device."""
        if not use_iou_matrix:
            raise ValueError("generic_nms: only the IoU-matrix form (use_iou_matrix=True) is provided")
        n = scores.numel()
        # In float32 whatever comes in (bf16 under autocast), as the reference compares.
        order = torch.sort(scores.float(), descending=True, stable=True).indices
        # "not <=" rather than ">": an IoU of NaN suppresses, as in the reference.
        suppresses = ~(ious.float()[order][:, order] <= iou_threshold)
        # The greedy pass is sequential; the kept indices' length needs the host anyway, so the
        # matrix (n x n booleans, n <= the detector's queries) crosses once and the loop runs there.
        host = suppresses.cpu().numpy()
        keep = np.ones(n, dtype=bool)
        for i in range(n):
            if keep[i]:
                keep[i + 1:] &= ~host[i, i + 1:]
        kept = torch.from_numpy(np.flatnonzero(keep)).to(order.device)
        return order[kept]

    def cc_2d(self, mask: torch.Tensor, get_counts: bool = True):
        """8-connected components of each (H, W) plane of ``mask`` ((B, 1, H, W) or (B, H, W),
        non-zero is foreground). Returns int32 tensors shaped like ``mask`` on its device: labels
        (0 for background, 1.. per plane in raster order) and, with ``get_counts``, each pixel's
        component size (0 for background)."""
        height, width = mask.shape[-2:]
        # Low-resolution masks (64-288 px a side): labelling them on the host costs less than a
        # round of device kernels, and SciPy's labelling is the well-tested one.
        planes = mask.detach().to("cpu").numpy().reshape(-1, height, width) != 0
        labels, _ = ndimage.label(planes, structure=_PLANE_NEIGHBOURS)
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        counts = sizes[labels]
        # Labels count up across the batch; make them start at 1 in each plane like a 2D labelling.
        last = labels.reshape(len(planes), -1).max(axis=1)
        before = np.concatenate(([0], np.maximum.accumulate(last)[:-1]))
        labels = np.where(labels > 0, labels - before[:, None, None], 0)
        out_labels = torch.from_numpy(labels.astype(np.int32).reshape(mask.shape)).to(mask.device)
        if not get_counts:
            return out_labels
        return out_labels, torch.from_numpy(counts.astype(np.int32).reshape(mask.shape)).to(mask.device)


@dataclass(frozen=True)
class Postprocess:
    """Which of SAM 3's post-processing steps run, with their settings, and which backend runs them."""

    backend: str
    nms_threshold: float | None  # detection NMS IoU threshold; None: off in the model's config
    fill_hole_area: int | None  # largest hole filled / speck removed (pixels); None: off

    def params(self) -> dict:
        """masks.json's params.postprocess."""
        return {"nms": self.nms_threshold, "fill_hole_area": self.fill_hole_area}


def _hub_kernel() -> tuple[object | None, str]:
    """The hub kernel transformers would load, when the ``kernels`` package is installed and the
    kernel is in its cache (or the hub is reachable); else None and why."""
    if importlib.util.find_spec("kernels") is None:
        return None, "the kernels package is not installed"
    try:
        from kernels import get_kernel

        return get_kernel(HUB_KERNEL, version=1), ""
    except Exception as err:  # any failure (offline, no build for this torch/device) means: use ours
        return None, f"{HUB_KERNEL} did not load ({type(err).__name__}: {err})"


def _crafted_case(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two identical detections and a third apart; a 64x64 mask with a 2x2 hole and a 2x2 speck."""
    masks = torch.full((3, 64, 64), -1.0, device=device)
    masks[:2, 8:40, 8:40] = 1.0
    masks[2, 48:60, 48:60] = 1.0
    probs = torch.tensor([0.9, 0.8, 0.7], device=device)
    scores = torch.full((1, 1, 64, 64), -1.0, device=device)
    scores[..., 10:30, 10:30] = 1.0
    scores[..., 18:20, 18:20] = -1.0  # hole
    scores[..., 50:52, 50:52] = 1.0  # speck
    return probs, masks, scores


def check_steps(device: torch.device, max_area: int = 16, nms_threshold: float = 0.1) -> str | None:
    """Run transformers' own ``nms_masks`` and ``fill_holes_in_mask_scores`` on a crafted case on
    ``device``; None if the duplicate is suppressed, the hole filled and the speck removed, else
    what did not happen."""
    probs, masks, scores = _crafted_case(device)
    try:
        keep = modeling_sam3_video.nms_masks(probs, masks, prob_threshold=0.0, iou_threshold=nms_threshold)
        filled = modeling_sam3_video.fill_holes_in_mask_scores(scores, max_area=max_area)
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    if keep.tolist() != [True, False, True]:
        return f"mask NMS kept {keep.tolist()} of two duplicates and one apart"
    if not bool((filled[..., 18:20, 18:20] > 0).all()):
        return "a 2x2 hole was not filled"
    if not bool((filled[..., 50:52, 50:52] <= 0).all()):
        return "a 2x2 speck was not removed"
    return None


def install(model: modeling_sam3_video.Sam3VideoModel, device: torch.device) -> Postprocess:
    """Give transformers a working cv-utils kernel for ``model`` on ``device``: the hub kernel if it
    loads and passes ``check_steps``, else ours. Raises ProcessingError if neither does."""
    if not hasattr(modeling_sam3_video, "cv_utils_kernel"):
        raise ProcessingError(
            "transformers' Sam3VideoModel no longer looks for cv_utils_kernel: its mask NMS and hole "
            "filling would not run (check the transformers version against pyproject.toml's pin)")
    hub, why_not = _hub_kernel()
    candidates = ([(f"hub kernel {HUB_KERNEL}", hub)] if hub is not None else []) + [(OfflineCvUtils.name, OfflineCvUtils())]
    failures = [why_not] if why_not else []
    for name, kernel in candidates:
        modeling_sam3_video.cv_utils_kernel = kernel
        problem = check_steps(device)
        if problem is None:
            if failures:
                log.info("mask post-processing: not the hub kernel (%s)", "; ".join(failures))
            return Postprocess(
                backend=name,
                nms_threshold=float(model.det_nms_thresh) if model.det_nms_thresh > 0 else None,
                fill_hole_area=int(model.fill_hole_area) if model.fill_hole_area > 0 else None,
            )
        failures.append(f"{name} on {device.type}: {problem}")
    modeling_sam3_video.cv_utils_kernel = None
    raise ProcessingError("SAM 3's mask post-processing (NMS, hole filling, speck removal) cannot run: "
                          + "; ".join(failures))
