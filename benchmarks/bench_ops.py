"""Launch counts of SAM 3 video tracking per frame: main at 038fd06's loop beside today's path, on any machine.

Every aten operation is at least one kernel launch on a GPU, and at a handful of objects the
tracker is launch-bound there (ARCHITECTURE.md, "GPU"); the counts do not depend on the device, so
this runs on a CPU, in CI, and tells in a minute whether a change removed work per object.

What it runs: ``bench_gpu``'s tiny random SAM 3 with its ``DetectionCap`` (N detections a frame,
at most N objects), over deterministic synthetic frames (``bench_gpu.synthetic_frames``, small so
that postprocessing stays cheap on a CPU). For each object count N:

- ``baseline``: the frozen 038fd06 loop (``benchmarks/frozen_038fd06``: push, then prune),
  transformers' per-object tracker loop;
- ``current``: today's path: ``workers.model.engine.FrameEngine`` at frame batch B, the object-batched
  tracker (``workers.model.object_batch``) on (``--no-object-batch``: transformers' loop, as before it).

Each warms up over ``--prewarm`` frames (past SAM 3's 15-frame hotstart and its 16-frame pointer
window), then ``torch.profiler`` records ``--frames`` frames (whole groups of B; today's path with
one group pushed ahead, since it tracks a group when the next one arrives). One JSON line
per figure: ``aten_ops_per_frame`` (every ``aten::`` event, nested ones included),
``copy_per_frame`` (``aten::copy_``), ``host_syncs_per_frame`` (``aten::_local_scalar_dense``,
i.e. ``.item()`` and friends, plus the operations whose output size a GPU must report back first:
``nonzero``, ``masked_select``, ``unique``; plus device-to-host copies, which the profiler sees
only on CUDA), and the objects actually tracked.

Imports only torch, numpy, transformers and the model path of ``workers``.

Run: .venv/bin/python -m benchmarks.bench_ops [--objects 1,4,16] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import torch
import transformers
from torch.profiler import ProfilerActivity, profile

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script as well as -m
    sys.path.insert(0, str(REPO))

from benchmarks.bench_gpu import (  # noqa: E402
    DetectionCap,
    Frames,
    TrackedVideo,
    baseline_stream,
    card,
    engine_stream,
    git_commit,
    parse_ints,
    random_model,
    synthetic_frames,
    warm_tracker,
)
from workers.model import object_batch  # noqa: E402

# Operations that make the host wait for the device: a scalar read, or an output whose size only
# the device knows.
SYNC_OPS = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
            "aten::unique_dim", "aten::unique_consecutive")


def count(stream: TrackedVideo, frames: Frames, start: int, measured: int, device: torch.device,
          lead: int = 0) -> tuple[Counter, list[int]]:
    """Push ``lead`` frames, then frames [start + lead, start + lead + measured) under the profiler;
    (event counts, objects tracked after each). Today's path tracks a group of frames when the next
    group is pushed (the backbone batches a whole group): with one group pushed ahead (``lead``),
    the profiled pushes track ``measured`` frames, as in a running chunk. Without it they would only
    queue frames, and the counts would miss the backbone and the tracker altogether."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    tracked = []
    for idx in range(start, start + lead):
        stream.push(idx, frames(idx))
    with profile(activities=activities) as prof:
        for idx in range(start + lead, start + lead + measured):
            stream.push(idx, frames(idx))
            tracked.append(stream.tracked())
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    return Counter(event.name for event in prof.events()), tracked


def record(path: str, n: int, counts: Counter, tracked: list[int], measured: int) -> dict:
    aten = sum(c for name, c in counts.items() if name.startswith("aten::"))
    syncs = {name.removeprefix("aten::"): counts[name] for name in SYNC_OPS if counts[name]}
    d2h = sum(c for name, c in counts.items() if name.startswith("Memcpy DtoH"))
    if d2h:
        syncs["device_to_host_copies"] = d2h
    return {
        "path": path,
        "objects": n,
        "aten_ops_per_frame": round(aten / measured, 1),
        "copy_per_frame": round(counts["aten::copy_"] / measured, 1),
        "host_syncs_per_frame": round(sum(syncs.values()) / measured, 2),
        "host_syncs_by_kind_per_frame": {k: round(v / measured, 2) for k, v in syncs.items()},
        "objects_tracked_per_frame": round(sum(tracked) / len(tracked), 3),
        "frames_measured": measured,
    }


def measure(path: str, n: int, make: Callable[[], TrackedVideo], frames: Frames, args, device, lead: int) -> dict:
    stream = make()
    counts, tracked = count(stream, frames, args.prewarm, args.frames, device, lead)
    stream.close()
    return record(path, n, counts, tracked, args.frames)


def run(args: argparse.Namespace) -> list[dict]:
    started = time.perf_counter()
    transformers.logging.set_verbosity_error()  # "hitting max_num_objects" on every capped frame
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    loaded = random_model("tiny", device, "cpu")
    cap = DetectionCap(loaded.model)
    frames = Frames(synthetic_frames(args.prewarm + args.frame_batch + args.frames, args.height, args.width),
                    "synthetic moving shapes")
    from workers.model.engine import FrameEngine  # the new path

    engine = FrameEngine(loaded)
    common = {"card": card(device), "commit": git_commit(), "torch": torch.__version__,
              "transformers": transformers.__version__,
              "config": {"model": "tiny", "frame_batch": args.frame_batch, "prewarm_frames": args.prewarm,
                         "object_batch": args.object_batch,
                         "resolution": f"{frames.width}x{frames.height}"}}
    records = []

    def baseline() -> TrackedVideo:
        stream = baseline_stream(loaded, frames)
        for idx in range(args.prewarm):
            stream.push(idx, frames(idx))
        return stream

    def current() -> TrackedVideo:
        return engine_stream(engine, loaded, warm_tracker(loaded, frames, args.prewarm), args.frame_batch)

    for n in args.objects:
        cap.set(n)
        # The frozen loop tracks each frame as it is pushed; today's path one group behind (``count``).
        for path, make, batched, lead in (("baseline", baseline, False, 0),
                                          ("current", current, args.object_batch, args.frame_batch)):
            object_batch.install(loaded.model, batched)
            rec = {**measure(path, n, make, frames, args, device, lead), **common}
            print(json.dumps(rec), flush=True)
            records.append(rec)
    print(f"# done in {time.perf_counter() - started:.1f} s", file=sys.stderr)
    return records


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--objects", type=parse_ints, default=[1, 4, 16], help="object counts N (default 1,4,16)")
    p.add_argument("--frame-batch", type=int, default=8, help="today's path's frame batch B (default 8)")
    p.add_argument("--prewarm", type=int, default=16,
                   help="frames tracked before counting, a multiple of B (default 16: past the hotstart and "
                        "the pointer window)")
    p.add_argument("--frames", type=int, default=8, help="frames counted, a multiple of B (default 8)")
    p.add_argument("--height", type=int, default=180, help="synthetic frames' height")
    p.add_argument("--width", type=int, default=320, help="synthetic frames' width")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--object-batch", action=argparse.BooleanOptionalAction, default=True,
                   help="today's path with the object-batched tracker (default) or transformers' loop (the path "
                        "before workers.model.object_batch)")
    p.add_argument("--out", default=None, help="also write the JSON lines to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.prewarm % args.frame_batch or args.frames % args.frame_batch:
        sys.exit(f"--prewarm {args.prewarm} and --frames {args.frames} must be multiples of --frame-batch "
                 f"{args.frame_batch} (today's path counts whole groups)")
    records = run(args)
    if args.out:
        Path(args.out).write_text("".join(json.dumps(r) + "\n" for r in records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
