"""Per-frame cost of SAM 3's mask post-processing (detection NMS, hole filling, speck removal) on CPU.

A frame of Sam3VideoModel runs ``fill_holes_in_mask_scores`` over the tracked objects' low-resolution
masks and ``nms_masks`` over the detector's queries (those above the detection threshold enter the
NMS). Both are timed through transformers' own functions, at 1, 4 and 16 objects, with:
- ours: workers/cv_utils.OfflineCvUtils (what load_model installs);
- skipped: transformers without a kernel (the steps return their input: what ran before);
- Meta's CPU reference (sam3.perflib, when the test-only `sam3` package is installed).

    python -m benchmarks.bench_postprocess_ref [--mask-size 288] [--queries 200] [--repeats 10] [--threads 1]
"""

from __future__ import annotations

import argparse
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
from workers.model.cv_utils import OfflineCvUtils  # noqa: E402


def _meta_backend():
    try:
        from tests.meta_reference import MetaCvUtils
    except ImportError:
        return None
    return MetaCvUtils()


def _blob_scores(rng: np.random.Generator, count: int, size: int) -> torch.Tensor:
    """Mask logits like a segmenter's: a few smooth blobs, plus a few small holes and specks."""
    coarse = torch.from_numpy(rng.standard_normal((count, 1, 6, 6)).astype(np.float32))
    logits = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)[:, 0] - 0.8
    for plane in logits:
        for _ in range(6):  # holes inside and specks outside, 1-4 pixels a side
            y, x, side = int(rng.integers(0, size - 4)), int(rng.integers(0, size - 4)), int(rng.integers(1, 5))
            plane[y:y + side, x:x + side] *= -1
    return logits.contiguous()


def _frame(objects: int, size: int, queries: int, threshold: float, rng: np.random.Generator):
    tracked = _blob_scores(rng, objects, size).unsqueeze(1)
    det_masks = _blob_scores(rng, queries, size)
    probs = torch.from_numpy(rng.uniform(0.0, threshold, queries).astype(np.float32))
    # Each tracked object is detected again, plus two more detections above the threshold.
    above = rng.choice(queries, size=min(queries, objects + 2), replace=False)
    probs[above] = torch.from_numpy(rng.uniform(threshold, 1.0, len(above)).astype(np.float32))
    return tracked, probs, det_masks


def _one_frame_ms(backend, frame, fill_hole_area: int, nms_thresh: float, threshold: float) -> float:
    tracked, probs, det_masks = frame
    msv.cv_utils_kernel = backend
    start = time.perf_counter()
    msv.fill_holes_in_mask_scores(tracked, max_area=fill_hole_area)
    msv.nms_masks(probs, det_masks, prob_threshold=threshold, iou_threshold=nms_thresh)
    return 1000 * (time.perf_counter() - start)


def _best_ms(backends: dict, frame, repeats: int, *settings) -> dict[str, float]:
    """Backends interleaved, so that drifting machine load hits them alike; the best of each."""
    times: dict[str, list[float]] = {name: [] for name in backends}
    for _ in range(repeats):
        for name, backend in backends.items():
            times[name].append(_one_frame_ms(backend, frame, *settings))
    return {name: min(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask-size", type=int, default=288, help="low_res_mask_size (SAM 3: 288; the tiny model: 64)")
    parser.add_argument("--queries", type=int, default=200, help="detector queries (SAM 3: 200; the tiny model: 20)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    threshold, nms_thresh, fill_hole_area = 0.5, 0.1, 16  # SAM 3's defaults
    backends = {"skipped": False, "ours": OfflineCvUtils()}
    meta = _meta_backend()
    if meta is not None:
        backends["Meta CPU"] = meta
    print(f"{machine()}, torch threads {torch.get_num_threads()}, masks {args.mask_size}x{args.mask_size}, "
          f"{args.queries} queries, best of {args.repeats}")
    print("objects | " + " | ".join(f"{name} ms/frame" for name in backends) + " | cost of the steps (ours - skipped)")
    rng = np.random.default_rng(0)
    for objects in (1, 4, 16):
        frame = _frame(objects, args.mask_size, args.queries, threshold, rng)
        ms = _best_ms(backends, frame, args.repeats, fill_hole_area, nms_thresh, threshold)
        print(f"{objects:7d} | " + " | ".join(f"{v:.2f}" for v in ms.values()) + f" | {ms['ours'] - ms['skipped']:.2f}")


if __name__ == "__main__":
    main()
