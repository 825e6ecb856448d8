"""GPU throughput of SAM 3 video tracking: the frame engine beside main at 038fd06's per-frame loop, one run.

What it runs: a randomly initialised SAM 3 video model built in memory (``--size full``: transformers'
default architecture, ~860 M parameters at 1008 px; never saved), with the tiny model's tweaks
(object-score bias +5, detection thresholds 0), over 720p frames (``02_cups.mp4`` decoded once with
PyAV when it is importable, a ``--frames-file``, or synthetic moving shapes).

Detections are controlled so the cost resembles real weights: random weights with thresholds at 0
detect all ~200 queries on every frame, where real weights detect a handful. ``DetectionCap`` keeps
the N top-scoring detections of each frame and caps the tracker at N objects, so N objects appear in
the first frames and later frames bring at most N detections. Each figure reports the detections and
objects it actually saw per frame, so a cap that did not hold shows.

Figures, one JSON line each (every line names the card, commit, torch/transformers versions and the
config):

- ``baseline``: main at 038fd06's per-frame loop (``benchmarks/frozen_038fd06``: ``push`` then
  ``prune``), one stream, for each object count;
- ``engine``: ``workers.model.engine.FrameEngine``, for each object count N, frame batch B and K streams
  (K threads, each driving its own stream on the one engine): ms a frame per stream, frames/s per
  GPU in aggregate, peak GPU memory per stream (null on CPU), and the speed-up over the baseline.

Timing: every stream starts from a steady state (a tracker that has already tracked ``--prewarm``
frames with the current per-frame loop, past the 15-frame hotstart and the memory and
object-pointer windows; copied through the state codec for each stream), runs untimed up to the
next boundary of its frame groups (groups sit on the grid gB; the default 28 frames leave a 4-frame
warm-up group for B = 8 and 16, one frame for B = 1), then the K streams start together and are
timed over whole groups. ``torch.cuda.synchronize`` before the start and at each stream's end.
The baseline warms up over the same ``--prewarm`` frames.
bf16 autocast on CUDA, as ``workers.model.loading`` does. ``--budget-s``: figures not started within it are
printed as ``skipped`` (the most important run first: 4 objects).

Imports only torch, numpy, transformers and the model path of ``workers`` (PyAV when present), so
it runs on a GPU machine with no project setup.

Run: .venv/bin/python -m benchmarks.bench_gpu [--smoke] [--out FILE]
     (on a GPU: benchmarks/run_bench_gpu_device.sh)
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import transformers

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script (python benchmarks/bench_gpu.py) as well as -m
    sys.path.insert(0, str(REPO))

from benchmarks.frozen_038fd06.prune import prune as frozen_prune  # noqa: E402
from benchmarks.frozen_038fd06.tracker import VideoTracker as FrozenTracker  # noqa: E402
from workers.model import cv_utils  # noqa: E402
from workers.model.loading import LoadedModel  # noqa: E402
from workers.model.state_codec import TrackerState  # noqa: E402
from workers.model.state_pruning import prune  # noqa: E402
from workers.model.tiny_model import SIZES, build_model  # noqa: E402
from workers.model.tokenizer import build_clip_tokenizer  # noqa: E402
from workers.model.tracker import VideoTracker, check_prompts  # noqa: E402

SHARED = Path(os.environ.get("SAM3V_SHARED", REPO.parent / "shared"))
VIDEO = SHARED / "videos" / "02_cups.mp4"
PROMPT = "cup"
GIB = 1024**3


# --- frames -------------------------------------------------------------------------------------

def decode_frames(path: Path, count: int) -> list[np.ndarray] | None:
    """The first ``count`` frames of ``path`` as RGB arrays, or None without PyAV or the file."""
    try:
        import av  # optional: the GPU machine has no PyAV
    except ImportError:
        return None
    if not path.is_file():
        return None
    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == count:
                break
    return frames


def synthetic_frames(count: int, height: int = 720, width: int = 1280) -> list[np.ndarray]:
    """Coloured discs and boxes drifting over a gradient: textured, moving, deterministic."""
    yy, xx = np.mgrid[0:height, 0:width]
    background = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 96)], axis=-1).astype(np.uint8)
    rng = np.random.default_rng(0)
    shapes = [(rng.uniform(0.1, 0.9, 2), rng.uniform(-0.01, 0.01, 2), rng.integers(0, 256, 3), rng.uniform(0.05, 0.15))
              for _ in range(6)]
    frames = []
    for t in range(count):
        frame = background.copy()
        for k, (pos, vel, colour, radius) in enumerate(shapes):
            cy, cx = (pos + t * vel) % 1.0 * (height, width)
            r = radius * height
            inside = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) if k % 2 else ((abs(yy - cy) < r) & (abs(xx - cx) < r))
            frame[inside] = colour
        frames.append(frame)
    return frames


@dataclass
class Frames:
    images: list[np.ndarray]
    source: str

    def __call__(self, frame_idx: int) -> np.ndarray:
        # Ping-pong through the decoded frames: any frame count, and no scene cut at the wrap.
        n = len(self.images)
        period = max(1, 2 * n - 2)
        i = frame_idx % period
        return self.images[i if i < n else period - i]

    @property
    def height(self) -> int:
        return self.images[0].shape[0]

    @property
    def width(self) -> int:
        return self.images[0].shape[1]


def load_frames(frames_file: str | None, count: int, synthetic_size: tuple[int, int]) -> Frames:
    if frames_file:
        with np.load(frames_file) as data:
            images = list(data["frames"])
        return Frames(images, f"{Path(frames_file).name} ({len(images)} pre-decoded frames)")
    decoded = decode_frames(VIDEO, count)
    if decoded:
        return Frames(decoded, f"{VIDEO.name} (first {len(decoded)} frames, PyAV)")
    height, width = synthetic_size
    return Frames(synthetic_frames(count, height, width), "synthetic moving shapes")


# --- the model and its detections ---------------------------------------------------------------

def random_model(size: str, device: torch.device, build_on: str, seed: int = 0) -> LoadedModel:
    model = build_model(size, seed, device=device if build_on == "device" else None)
    model = model.to(device).eval()  # stray buffers made outside the device context, if any
    # SAM 3's mask post-processing on, as load_model has it: its cost is part of a frame's
    return LoadedModel(model, build_clip_tokenizer(), device, f"random {size}", f"random-seed{seed}", size == "tiny",
                       cv_utils.install(model, device))


def _top(detections: dict, n: int) -> dict:
    scores = detections["scores"]
    if scores.shape[0] <= n:
        return detections
    keep = scores.topk(n).indices
    return {key: value[keep] for key, value in detections.items()}


class DetectionCap:
    """At most ``n`` detections a frame (the top-scoring ones, per prompt) and ``n`` objects.

    Replaces the model instance's ``run_detection`` (the model calls ``self.run_detection``), so
    every path through the model, the engine's included, sees the cap; counts what it let through.
    """

    def __init__(self, model) -> None:
        self._model = model
        self._run_detection = model.run_detection  # the bound original
        self._lock = threading.Lock()
        self.n = 0
        self.calls = 0
        self.detections = 0
        model.run_detection = self._capped

    def set(self, n: int) -> None:
        self.n = n
        self._model.max_num_objects = n

    def reset(self) -> None:
        with self._lock:
            self.calls = 0
            self.detections = 0

    def per_frame(self) -> float | None:
        with self._lock:
            return self.detections / self.calls if self.calls else None

    def _capped(self, *args, **kwargs):
        capped = {pid: _top(det, self.n) for pid, det in self._run_detection(*args, **kwargs).items()}
        with self._lock:
            self.calls += 1
            self.detections += sum(int(det["scores"].shape[0]) for det in capped.values())
        return capped


# --- measuring ----------------------------------------------------------------------------------

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def gpu_memory(device: torch.device) -> Iterator[dict]:
    """Yields a dict that holds, afterwards, the peak bytes allocated above what was held before."""
    result: dict = {"peak": None, "above": None}
    if device.type != "cuda":
        yield result
        return
    gc.collect()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    yield result
    result["peak"] = torch.cuda.max_memory_allocated(device)
    result["above"] = result["peak"] - before


@dataclass
class TrackedVideo:
    """One video being tracked, whichever path: push(frame_idx, rgb) -> finished frames."""

    push: Callable
    close: Callable  # the last partial group and the hotstart buffer
    tracker: VideoTracker | FrozenTracker

    def tracked(self) -> int:
        return len(self.tracker.session.obj_ids)


@dataclass
class TrackedRun:
    frames: int = 0
    end: float = 0.0
    tracked: list[int] = field(default_factory=list)  # objects in the tracker, after each push
    output: list[int] = field(default_factory=list)  # objects in each finished frame


def _drive(device: torch.device, stream: TrackedVideo, frames: Frames, start: int, warmup: int, measured: int,
           ready: threading.Barrier, go: threading.Barrier, done: threading.Barrier, result: TrackedRun) -> None:
    idx = start
    for _ in range(warmup):
        stream.push(idx, frames(idx))
        idx += 1
    ready.wait()
    go.wait()
    for _ in range(measured):
        result.output += [len(f.object_ids) for f in stream.push(idx, frames(idx))]
        result.tracked.append(stream.tracked())
        idx += 1
    synchronize(device)  # the whole card: a stream that ends first also waits out the others' current step
    result.end = time.perf_counter()
    result.frames = measured
    done.wait()
    stream.close()  # untimed


def run_streams(device: torch.device, frames: Frames, streams: list[TrackedVideo], start: int,
                warmup: int, measured: int, on_start: Callable[[], None]) -> tuple[float, list[TrackedRun]]:
    """Drive each stream in its own thread from frame ``start``: ``warmup`` untimed frames,
    then ``measured`` timed frames, all streams starting together (``on_start`` just before).
    Returns (start time, runs)."""
    k = len(streams)
    ready, go, done = (threading.Barrier(k + 1) for _ in range(3))
    runs = [TrackedRun() for _ in streams]
    errors: list[BaseException] = []

    def body(stream, result):
        try:
            _drive(device, stream, frames, start, warmup, measured, ready, go, done, result)
        except BaseException as err:  # noqa: BLE001 - re-raised in the main thread
            errors.append(err)
            for barrier in (ready, go, done):
                barrier.abort()

    threads = [threading.Thread(target=body, args=(stream, run), name=f"stream-{i}", daemon=True)
               for i, (stream, run) in enumerate(zip(streams, runs))]
    for thread in threads:
        thread.start()
    try:
        ready.wait()
        synchronize(device)
        on_start()
        t0 = time.perf_counter()
        go.wait()
        done.wait()
    except threading.BrokenBarrierError:
        pass
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return t0, runs


@dataclass
class Figure:
    ms_per_frame: list[float]
    fps_aggregate: float
    frames_measured: int
    objects_tracked: float | None
    objects_output: float | None


def _mean(values: list[int]) -> float | None:
    return round(sum(values) / len(values), 3) if values else None


def figure_of(t0: float, runs: list[TrackedRun]) -> Figure:
    end = max(r.end for r in runs)
    total = sum(r.frames for r in runs)
    return Figure(
        ms_per_frame=[1000 * (r.end - t0) / r.frames for r in runs],
        fps_aggregate=total / (end - t0),
        frames_measured=total,
        objects_tracked=_mean([n for r in runs for n in r.tracked]),
        objects_output=_mean([n for r in runs for n in r.output]),
    )


# --- the two paths ------------------------------------------------------------------------------

def baseline_stream(loaded: LoadedModel, frames: Frames) -> TrackedVideo:
    """038fd06's loop as its chunk.py ran it: push, then prune, frame by frame."""
    tracker = FrozenTracker(loaded, [PROMPT], frames.height, frames.width)

    def push(idx, rgb):
        finished = tracker.push(idx, rgb)
        frozen_prune(tracker, idx)
        return finished

    return TrackedVideo(push, tracker.flush, tracker)


def warm_tracker(loaded: LoadedModel, frames: Frames, count: int) -> VideoTracker:
    """A tracker in steady state: ``count`` frames tracked with today's per-frame loop."""
    tracker = VideoTracker(loaded, check_prompts(loaded.tokenizer, [PROMPT]), frames.height, frames.width)
    for idx in range(count):
        tracker.push(idx, frames(idx))
        prune(tracker, idx)
    return tracker


def engine_stream(engine, loaded: LoadedModel, warm: VideoTracker, frame_batch: int) -> TrackedVideo:
    """A stream continuing ``warm``, pruned after each step as a chunk's stream is."""
    # Capture copies every tensor, so each stream owns its state (restore alone may share them on CPU).
    tracker = TrackerState.capture(warm).restore(loaded)
    stream = engine.open_feed(tracker, frame_batch=frame_batch, after_step=lambda idx: prune(tracker, idx))
    return TrackedVideo(stream.push, stream.finish, tracker)


# --- the run ------------------------------------------------------------------------------------

def parse_ints(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers, e.g. 1,4,16") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected positive integers")
    return values


def git_commit() -> str | None:
    if os.environ.get("SAM3V_BENCH_COMMIT"):
        return os.environ["SAM3V_BENCH_COMMIT"]
    try:
        out = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def card(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def warmup_frames(start: int, frame_batch: int) -> int:
    """Frames up to the next group boundary (groups sit on the grid gB); a whole group when
    ``start`` is on one. The timed frames then begin with a group."""
    return -start % frame_batch or frame_batch


def per_stream_measured(frames: int, streams: int, frame_batch: int) -> int:
    """Whole groups, about ``frames`` in all across the streams, at least one group each."""
    return frame_batch * max(1, math.ceil(frames / (streams * frame_batch)))


@dataclass
class Bench:
    """What every figure shares: the model, its detection cap, the engine, the frames, the output."""

    args: argparse.Namespace
    device: torch.device
    loaded: LoadedModel
    cap: DetectionCap
    engine: object  # workers.model.engine.FrameEngine
    frames: Frames
    common: dict
    out: object | None
    started: float

    def budget_spent(self) -> bool:
        return bool(self.args.budget_s) and time.perf_counter() - self.started > self.args.budget_s

    def line(self, record: dict) -> None:
        text = json.dumps({**record, **self.common})
        print(text, flush=True)
        if self.out:
            self.out.write(text + "\n")
            self.out.flush()


def _gib(value: int | None) -> float | None:
    return None if value is None else round(value / GIB, 3)


def _record(kind: str, n: int, b: int, k: int, fig: Figure, memory: dict, warmup: int) -> dict:
    return {
        "figure": kind, "objects": n, "frame_batch": b, "streams": k,
        "ms_per_frame_per_stream": round(sum(fig.ms_per_frame) / len(fig.ms_per_frame), 2),
        "ms_per_frame_streams": [round(v, 2) for v in fig.ms_per_frame],
        "fps_aggregate": round(fig.fps_aggregate, 3),
        "peak_gpu_gib": _gib(memory["peak"]),
        "gpu_gib_per_stream": _gib(None if memory["above"] is None else memory["above"] // k),
        "objects_tracked_per_frame": fig.objects_tracked,
        "objects_output_per_frame": fig.objects_output,
        "frames_measured": fig.frames_measured,
        "warmup_frames_per_stream": warmup,
    }


def _skipped(kind: str, n: int, b: int, k: int, reason: str) -> dict:
    return {"figure": kind, "objects": n, "frame_batch": b, "streams": k, "skipped": reason}


def baseline_figure(bench: Bench, n: int) -> float:
    """038fd06's loop, one stream, ``n`` objects; returns its frames/s."""
    bench.cap.set(n)
    with gpu_memory(bench.device) as memory:
        streams = [baseline_stream(bench.loaded, bench.frames)]
        t0, runs = run_streams(bench.device, bench.frames, streams, 0, bench.args.prewarm, bench.args.baseline_frames,
                               bench.cap.reset)
        del streams
    fig = figure_of(t0, runs)
    bench.line({**_record("baseline", n, 1, 1, fig, memory, bench.args.prewarm),
                "detections_per_frame": bench.cap.per_frame()})
    return fig.fps_aggregate


def engine_figure(bench: Bench, warm: VideoTracker, n: int, b: int, k: int, baseline_fps: float) -> None:
    """K streams of frame batch B on the engine, each continuing ``warm`` (``n`` objects)."""
    start = bench.args.prewarm
    warmup, measured = warmup_frames(start, b), per_stream_measured(bench.args.frames, k, b)
    with gpu_memory(bench.device) as memory:
        streams = [engine_stream(bench.engine, bench.loaded, warm, b) for _ in range(k)]

        def on_start() -> None:
            bench.cap.reset()
            if hasattr(bench.engine, "batches"):
                bench.engine.batches = []  # its record of frames per backbone call (the last 1000)

        t0, runs = run_streams(bench.device, bench.frames, streams, start, warmup, measured, on_start)
        del streams
    fig = figure_of(t0, runs)
    # Did the backbone batch across streams? (B = 1 computes features inside each step: none.)
    calls = list(getattr(bench.engine, "batches", []))
    bench.line({**_record("engine", n, b, k, fig, memory, warmup),
                "speedup_vs_baseline": round(fig.fps_aggregate / baseline_fps, 3),
                "detections_per_frame": bench.cap.per_frame(),
                "backbone_frames_per_call": _mean(calls)})


def setup(args: argparse.Namespace, out) -> Bench:
    started = time.perf_counter()
    transformers.logging.set_verbosity_error()  # "hitting max_num_objects" on every capped frame
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    frames = load_frames(args.frames_file, args.decode_frames, (args.height, args.width))
    loaded = random_model(args.size, device, args.build_on)
    from workers.model.engine import FrameEngine  # the new path

    common = {
        "card": card(device),
        "commit": git_commit(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "config": {
            "model": args.size,
            "parameters_m": round(sum(p.numel() for p in loaded.model.parameters()) / 1e6, 1),
            "image_size": loaded.image_size,
            "device": device.type,
            "autocast": str(loaded.autocast_dtype).removeprefix("torch.") if loaded.autocast_dtype else None,
            "frames": frames.source,
            "resolution": f"{frames.width}x{frames.height}",
            "prompt": PROMPT,
            "max_batch": args.max_batch,
            "prewarm_frames": args.prewarm,
            "torch_threads": torch.get_num_threads(),
        },
    }
    return Bench(args, device, loaded, DetectionCap(loaded.model), FrameEngine(loaded, max_batch=args.max_batch),
                 frames, common, out, started)


def run(args: argparse.Namespace) -> int:
    out = open(args.out, "a") if args.out else None  # noqa: SIM115 - closed below
    try:
        bench = setup(args, out)
        print(f"# setup {time.perf_counter() - bench.started:.1f} s: {bench.common['card']}, {bench.common['config']}",
              file=sys.stderr)
        for n in args.objects:
            engine_keys = [(b, k) for b in args.frame_batch for k in args.streams]
            if bench.budget_spent():
                reason = f"time budget spent (--budget-s {args.budget_s:g})"
                bench.line(_skipped("baseline", n, 1, 1, reason))
                for b, k in engine_keys:
                    bench.line(_skipped("engine", n, b, k, reason))
                continue
            baseline_fps = baseline_figure(bench, n)
            warm = warm_tracker(bench.loaded, bench.frames, args.prewarm)
            for b, k in engine_keys:
                if bench.budget_spent():
                    bench.line(_skipped("engine", n, b, k, f"time budget spent (--budget-s {args.budget_s:g})"))
                else:
                    engine_figure(bench, warm, n, b, k, baseline_fps)
            del warm
        print(f"# done in {time.perf_counter() - bench.started:.1f} s", file=sys.stderr)
    finally:
        if out:
            out.close()
    return 0


SMOKE = {"size": "tiny", "device": "cpu", "objects": [1, 4], "frame_batch": [1, 4], "streams": [1, 2],
         "frames": 4, "prewarm": 2, "baseline_frames": 4, "decode_frames": 8}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true",
                   help=f"a reduced matrix on CPU with the tiny model (CI): {SMOKE}; explicit options still win")
    p.add_argument("--size", choices=SIZES, default=None, help="model size (default full; tiny with --smoke)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None, help="default auto (cpu with --smoke)")
    p.add_argument("--build-on", choices=("device", "cpu"), default="device",
                   help="where the random weights are initialised (device: seconds on a GPU)")
    p.add_argument("--objects", type=parse_ints, default=None, help="object counts N, in run order (default 4,1,16)")
    p.add_argument("--frame-batch", type=parse_ints, default=None, help="frame batches B (default 1,8,16)")
    p.add_argument("--streams", type=parse_ints, default=None, help="stream counts K (default 1,2,4,8)")
    p.add_argument("--frames", type=int, default=None,
                   help="timed frames per engine figure, across its streams, rounded up to whole groups (default 16)")
    p.add_argument("--baseline-frames", type=int, default=None, help="timed frames of the baseline (default 16)")
    p.add_argument("--prewarm", type=int, default=None,
                   help="frames tracked before timing (default 28: past SAM 3's 15-frame hotstart and its "
                        "16-frame pointer window, 4 frames short of a group boundary)")
    p.add_argument("--max-batch", type=int, default=16, help="FrameEngine's max_batch")
    p.add_argument("--frames-file", default=None, help=".npz with 'frames' (F, H, W, 3) uint8, e.g. from --save-frames")
    p.add_argument("--save-frames", default=None, metavar="NPZ",
                   help="decode the frames (PyAV), write them for --frames-file on a machine without PyAV, and exit")
    p.add_argument("--decode-frames", type=int, default=None, help="frames decoded or made (default 16)")
    p.add_argument("--height", type=int, default=720, help="synthetic frames' height")
    p.add_argument("--width", type=int, default=1280, help="synthetic frames' width")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no figure after this many seconds; the rest print as skipped (default 250; none with --smoke)")
    p.add_argument("--out", default=None, help="also append the JSON lines to this file")
    return p


def resolve(args: argparse.Namespace) -> argparse.Namespace:
    defaults = {"size": "full", "device": "auto", "objects": [4, 1, 16], "frame_batch": [1, 8, 16],
                "streams": [1, 2, 4, 8], "frames": 16, "prewarm": 28, "baseline_frames": 16,
                "decode_frames": 16, "budget_s": 250.0}
    if args.smoke:
        defaults.update(SMOKE, budget_s=0.0)
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def main(argv: list[str] | None = None) -> int:
    args = resolve(parser().parse_args(argv))
    if args.save_frames:
        decoded = decode_frames(VIDEO, args.decode_frames)
        if not decoded:
            sys.exit(f"--save-frames: cannot decode {VIDEO} (PyAV importable? file there? SAM3V_SHARED)")
        np.savez_compressed(args.save_frames, frames=np.stack(decoded))
        print(f"wrote {len(decoded)} frames of {VIDEO.name} to {args.save_frames}")
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
