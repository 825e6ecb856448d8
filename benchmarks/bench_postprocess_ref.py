"""Per-frame cost of SAM 3's mask post-processing (detection NMS, hole filling, speck removal) on CPU.

A frame of Sam3VideoModel runs ``fill_holes_in_mask_scores`` over the tracked objects' low-resolution
masks and ``nms_masks`` over the detector's queries (those above the detection threshold enter the
NMS). Both are timed through transformers' own functions, at 1, 4 and 16 objects, with:
- ours: workers/cv_utils.OfflineCvUtils (what load_model installs);
- skipped: transformers without a kernel (the steps return their input: what ran before);
- Meta's CPU reference (sam3.perflib, when the test-only `sam3` package is installed).

    python -m benchmarks.bench_postprocess_ref [--mask-size 288] [--queries 200] [--repeats 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from transformers.models.sam3_video import modeling_sam3_video as msv  # noqa: E402

from benchmarks.common import machine  # noqa: E402
from workers.cv_utils import OfflineCvUtils  # noqa: E402


def _meta_backend():
    try:
        from tests.meta_reference import MetaCvUtils
    except ImportError:
        return None
    return MetaCvUtils()


def _blob_scores(rng: np.random.Generator, count: int, size: int) -> torch.Tensor:
    """Mask logits with object-sized blobs, ragged edges, small holes and specks."""
    coarse = rng.standard_normal((count, size // 16 + 1, size // 16 + 1))
    smooth = np.repeat(np.repeat(coarse, 16, axis=1), 16, axis=2)[:, :size, :size]
    return torch.from_numpy((smooth + 0.6 * rng.standard_normal((count, size, size)) - 0.8).astype(np.float32))


def _frame(objects: int, size: int, queries: int, threshold: float, rng: np.random.Generator):
    tracked = _blob_scores(rng, objects, size).unsqueeze(1)
    det_masks = _blob_scores(rng, queries, size)
    probs = torch.from_numpy(rng.uniform(0.0, threshold, queries).astype(np.float32))
    # Each tracked object is detected again, plus two more detections above the threshold.
    above = rng.choice(queries, size=min(queries, objects + 2), replace=False)
    probs[above] = torch.from_numpy(rng.uniform(threshold, 1.0, len(above)).astype(np.float32))
    return tracked, probs, det_masks


def _median_ms(backend, frame, fill_hole_area: int, nms_thresh: float, threshold: float, repeats: int) -> float:
    tracked, probs, det_masks = frame
    msv.cv_utils_kernel = backend
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        msv.fill_holes_in_mask_scores(tracked, max_area=fill_hole_area)
        msv.nms_masks(probs, det_masks, prob_threshold=threshold, iou_threshold=nms_thresh)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask-size", type=int, default=288, help="low_res_mask_size (SAM 3: 288; the tiny model: 64)")
    parser.add_argument("--queries", type=int, default=200, help="detector queries (SAM 3: 200; the tiny model: 20)")
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    threshold, nms_thresh, fill_hole_area = 0.5, 0.1, 16  # SAM 3's defaults
    backends = {"skipped": False, "ours": OfflineCvUtils()}
    meta = _meta_backend()
    if meta is not None:
        backends["Meta CPU"] = meta
    print(f"{machine()}, torch threads {torch.get_num_threads()}, masks {args.mask_size}x{args.mask_size}, "
          f"{args.queries} queries, median of {args.repeats}")
    print("objects | " + " | ".join(f"{name} ms/frame" for name in backends) + " | cost of the steps (ours - skipped)")
    rng = np.random.default_rng(0)
    for objects in (1, 4, 16):
        frame = _frame(objects, args.mask_size, args.queries, threshold, rng)
        ms = {name: _median_ms(b, frame, fill_hole_area, nms_thresh, threshold, args.repeats) for name, b in backends.items()}
        print(f"{objects:7d} | " + " | ".join(f"{v:.2f}" for v in ms.values()) + f" | {ms['ours'] - ms['skipped']:.2f}")


if __name__ == "__main__":
    main()
