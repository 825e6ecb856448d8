"""Bounded memory on a long video: tracker state size, process RSS, and chunk-boundary cost.

A long synthetic low-resolution video (ffmpeg lavfi, made in a temp dir) is read with the
pipeline's reader (``open_reader``) and pushed frame by frame through one VideoTracker with the
tiny model, pruning after every push as ``segment_chunk`` does; outputs are discarded. Every
``--chunk-frames`` frames the tracker goes through the state codec (``save_state`` then
``load_state``) and the run continues on the restored tracker, as chunks do. The tiny model caps
its objects at 4 (``max_num_objects``), so the object count is fixed once the first objects appear:
growth cannot come from new objects (the count and the highest object id are printed over time).

Each measured run is a fresh child process, so its peak RSS (ru_maxrss) is its own: the long
video, and a short video of the first 200 frames of the same source (it also measures the
unpruned state at frame 200, after its RSS has been recorded).

Requirements (issue 3):
1. serialized tracker state (JSON + safetensors) after the last frame <= 1.2x after frame 200;
2. process RSS flat in video length, within 10%: frame 200 -> last frame of the long run, and the
   long video's peak vs the short video's peak (a reader that decodes ahead shows only there);
3. state save + load at a chunk boundary < 5% of the model time of a default chunk (300 frames).

Run: .venv/bin/python -m benchmarks.bench_chunk_memory [--frames N] [--chunk-frames 300]
     [--source testsrc2] [--backend decord|pyav] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SIZE = "320x180"
FPS = 30
PROMPTS = ["dog"]
MARK = 200  # the early reference point: frames pushed
STATE_LIMIT = 1.2
RSS_LIMIT = 0.10
BOUNDARY_LIMIT = 0.05


def make_video(path: Path, frames: int, source: str) -> None:
    subprocess.run(
        ["ffmpeg", "-v", "error", "-y", "-f", "lavfi", "-i", f"{source}=size={SIZE}:rate={FPS}",
         "-frames:v", str(frames), "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )


def rss_now() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def rss_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# --- the measured run (a child process) -----------------------------------------------------------

def footprint(value, seen: set[int]) -> tuple[int, int]:
    """(container items, tensor bytes) reachable from ``value``; each tensor counted once."""
    import torch

    if isinstance(value, torch.Tensor):
        if id(value) in seen:
            return 0, 0
        seen.add(id(value))
        return 1, value.numel() * value.element_size()
    if isinstance(value, dict):
        children, items = value.values(), len(value)
    elif isinstance(value, (list, tuple, set, frozenset)):
        children, items = value, len(value)
    else:
        return 0, 0
    nbytes = 0
    for child in children:
        i, b = footprint(child, seen)
        items, nbytes = items + i, nbytes + b
    return items, nbytes


def attributes(tracker) -> dict[str, list[int]]:
    """Footprint of every session attribute, the vision-feature cache and the output buffer."""
    seen: set[int] = set()
    out = {f"session.{k}": list(footprint(v, seen)) for k, v in vars(tracker.session).items() if k != "cache"}
    out["session.cache._vision_features"] = list(footprint(tracker.session.cache._vision_features, seen))
    out["tracker.buffer"] = list(footprint(tracker.buffer, seen))
    return out


def measure(video: Path, model_dir: Path, frames: int, chunk: int, sample_every: int,
            backend: str | None, contrast: bool) -> dict:
    import torch

    from workers.media.decode import open_reader
    from workers.media.probe import probe
    from workers.model.loading import load_model
    from workers.model.state_codec import TrackerState, load_state, save_state
    from workers.model.state_pruning import prune
    from workers.model.tracker import VideoTracker

    def state_size(tracker) -> tuple[int, int]:
        document, tensors = TrackerState.capture(tracker).to_bytes()
        return len(document), len(tensors)

    loaded = load_model(str(model_dir), "cpu")
    info = probe(video)
    result: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                    "max_num_objects": int(loaded.model.config.max_num_objects),
                    "rss_load": rss_now(), "peak_load": rss_peak(), "samples": {}, "attributes": {},
                    "chunk_model_s": [], "boundary_s": [], "emitted": []}
    boundaries = set(range(chunk, frames, chunk))  # frames pushed when a chunk ends (not the last)
    samples = set(range(sample_every, frames, sample_every)) | {min(MARK, frames), frames}
    print(f"{'frames':>6} {'objs':>4} {'max id':>6} {'state json':>10} {'tensors':>10} {'total':>10} "
          f"{'rss now':>10} {'rss peak':>10} {'s/frame':>7}", flush=True)
    tracker = VideoTracker(loaded, PROMPTS, info.height, info.width)
    model_s = since_boundary = since_sample = 0.0
    last_sample = 0
    with tempfile.TemporaryDirectory(prefix="bench-chunk-memory-state-") as tmp, \
            open_reader(info, 0, frames, backend=backend) as reader:
        result["backend"] = reader.backend
        for frame in reader:
            i = frame.index
            t = time.perf_counter()
            finished = tracker.push(i, frame.rgb)
            prune(tracker, i)
            dt = time.perf_counter() - t
            model_s += dt
            since_boundary += dt
            since_sample += dt
            result["emitted"].extend(len(f.object_ids) for f in finished)
            del finished, frame
            n = i + 1
            if n in samples:
                doc, ten = state_size(tracker)
                session = tracker.session
                row = {"json": doc, "tensors": ten, "objs": len(session.obj_ids), "max_id": int(session.max_obj_id),
                       "rss": rss_now(), "peak": rss_peak()}
                result["samples"][n] = row
                if n in (MARK, frames):
                    result["attributes"][n] = attributes(tracker)
                per_frame = since_sample / (n - last_sample)
                since_sample, last_sample = 0.0, n
                print(f"{n:>6} {row['objs']:>4} {row['max_id']:>6} {doc:>10,} {ten:>10,} {doc + ten:>10,} "
                      f"{mb(row['rss']):>10} {mb(row['peak']):>10} {per_frame:>7.3f}", flush=True)
            if n in boundaries:
                result["chunk_model_s"].append(since_boundary)
                since_boundary = 0.0
                state_dir = Path(tmp) / f"state-{n:06d}"
                t = time.perf_counter()
                save_state(tracker, state_dir)
                tracker = load_state(state_dir, loaded)
                result["boundary_s"].append(time.perf_counter() - t)
                shutil.rmtree(state_dir)
        result["decode_warning"] = reader.warning
    result["frames"] = last_sample
    result["model_s"] = model_s
    tracker.flush()
    del tracker
    if contrast:  # after the RSS samples: the unpruned state is two orders of magnitude larger
        unpruned = VideoTracker(loaded, PROMPTS, info.height, info.width)
        with open_reader(info, 0, MARK, backend=backend) as reader:
            for frame in reader:
                unpruned.push(frame.index, frame.rgb)
        result["unpruned"] = state_size(unpruned)
    return result


def run_child(out: Path, video: Path, model_dir: Path, frames: int, args, contrast: bool) -> dict:
    command = [sys.executable, "-m", "benchmarks.bench_chunk_memory", "--child", str(out), "--video", str(video),
               "--model-dir", str(model_dir), "--frames", str(frames), "--chunk-frames", str(args.chunk_frames),
               "--sample-every", str(args.sample_every)]
    if args.backend:
        command += ["--backend", args.backend]
    if args.threads:
        command += ["--threads", str(args.threads)]
    if contrast:
        command.append("--contrast")
    subprocess.run(command, check=True, cwd=Path(__file__).resolve().parents[1])
    result = json.loads(out.read_text())
    result["samples"] = {int(k): v for k, v in result["samples"].items()}
    result["attributes"] = {int(k): v for k, v in result["attributes"].items()}
    return result


# --- the report -----------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1200, help="long video length in frames (default 1200)")
    parser.add_argument("--chunk-frames", type=int, default=300, help="chunk size: 10 s at 30 fps (default 300)")
    parser.add_argument("--source", default="testsrc2", help="ffmpeg lavfi video source (default testsrc2)")
    parser.add_argument("--backend", choices=("decord", "pyav"), default=None,
                        help="force a decode backend (default: the pipeline's choice)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--sample-every", type=int, default=100, help="print a sample every N frames")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)  # internal: measure, write JSON here
    parser.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--contrast", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.child:
        result = measure(args.video, args.model_dir, args.frames, args.chunk_frames, args.sample_every,
                         args.backend, args.contrast)
        args.child.write_text(json.dumps(result))
        return
    if args.frames <= MARK:
        parser.error(f"--frames must be more than {MARK}")

    from benchmarks.common import machine
    from workers.model.tiny_model import save_tiny_model

    command = " ".join([".venv/bin/python -m benchmarks.bench_chunk_memory", *sys.argv[1:]])
    wall = time.perf_counter()
    n = args.frames
    chunk = args.chunk_frames
    tmp = Path(tempfile.mkdtemp(prefix="bench-chunk-memory-"))
    try:
        long_video, short_video = tmp / "long.mp4", tmp / "short.mp4"
        t0 = time.perf_counter()
        make_video(long_video, n, args.source)
        make_video(short_video, MARK, args.source)
        made_s = time.perf_counter() - t0
        model_dir = save_tiny_model(tmp / "tiny")
        print(f"machine: {machine()}")
        print(f"video: {args.source} {SIZE} @ {FPS} fps, {n} frames (and a {MARK}-frame one), libx264, made in "
              f"{made_s:.1f} s; tiny model, prompt {PROMPTS}; prune after every push; state codec round trip "
              f"every {chunk} frames; each run a fresh process")
        print(f"\nlong video ({n} frames):", flush=True)
        long = run_child(tmp / "long.json", long_video, model_dir, n, args, contrast=False)
        print(f"\nshort video ({MARK} frames), then {MARK} frames unpruned:", flush=True)
        short = run_child(tmp / "short.json", short_video, model_dir, MARK, args, contrast=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    total_s = time.perf_counter() - wall
    if long["frames"] != n or short["frames"] != MARK:
        raise SystemExit(f"decoded {long['frames']} of {n} and {short['frames']} of {MARK} frames")

    first, last = long["samples"][MARK], long["samples"][n]
    print(f"\ntorch {long['torch']}, {long['threads']} threads, cpu; decoder {long['backend']}; "
          f"tiny model max_num_objects {long['max_num_objects']}")
    emitted = long["emitted"]
    print(f"objects tracked: {first['objs']} at frame {MARK}, {last['objs']} at frame {n}; highest object id "
          f"{first['max_id']} -> {last['max_id']}; objects per emitted frame: min {min(emitted)}, max {max(emitted)} "
          f"over {len(emitted)} frames")
    fixed = first["objs"] == last["objs"] and first["max_id"] == last["max_id"] and first["objs"] > 0
    print(f"object count fixed from frame {MARK} on (no new objects, no removals): {'yes' if fixed else 'NO'}")

    # 1. State size.
    s200, send = first["json"] + first["tensors"], last["json"] + last["tensors"]
    ratio = send / s200
    print(f"\n1. serialized tracker state (json + safetensors), pruned: frame {MARK} {s200:,} B "
          f"({first['json']:,} + {first['tensors']:,}); frame {n} {send:,} B ({last['json']:,} + "
          f"{last['tensors']:,}); ratio {ratio:.3f}x (requirement <= {STATE_LIMIT}x): {verdict(ratio <= STATE_LIMIT)}")
    doc_u, ten_u = short["unpruned"]
    print(f"   for contrast, unpruned at frame {MARK}: {doc_u + ten_u:,} B ({doc_u:,} + {ten_u:,}), "
          f"{(doc_u + ten_u) / s200:.0f}x the pruned state")

    # 2. RSS.
    within_now = last["rss"] / first["rss"] - 1
    within_peak = last["peak"] / first["peak"] - 1
    s_last = short["samples"][MARK]
    across_peak = last["peak"] / s_last["peak"] - 1
    across_now = last["rss"] / s_last["rss"] - 1
    ok_within = abs(within_now) <= RSS_LIMIT and within_peak <= RSS_LIMIT
    ok_across = across_peak <= RSS_LIMIT
    print(f"2. process RSS (requirement: within {RSS_LIMIT:.0%}), after model load {mb(long['rss_load'])}:")
    print(f"   a. long run, frame {MARK} -> frame {n}: current {mb(first['rss'])} -> {mb(last['rss'])} "
          f"({within_now:+.1%}); peak {mb(first['peak'])} -> {mb(last['peak'])} ({within_peak:+.1%}): "
          f"{verdict(ok_within)}")
    print(f"   b. {MARK}-frame video -> {n}-frame video, at their last frame: peak {mb(s_last['peak'])} -> "
          f"{mb(last['peak'])} ({across_peak:+.1%}); current {mb(s_last['rss'])} -> {mb(last['rss'])} "
          f"({across_now:+.1%}) (after model load: {mb(short['rss_load'])} and {mb(long['rss_load'])}): "
          f"{verdict(ok_across)}")

    # 3. Chunk boundary cost.
    if long["boundary_s"]:
        boundary_s, chunk_s = long["boundary_s"], long["chunk_model_s"]
        mean_b, mean_chunk = sum(boundary_s) / len(boundary_s), sum(chunk_s) / len(chunk_s)
        share = mean_b / mean_chunk
        print(f"3. save_state + load_state per chunk boundary: {mean_b * 1e3:.0f} ms (mean of {len(boundary_s)}: "
              f"{', '.join(f'{b * 1e3:.0f}' for b in boundary_s)} ms) vs model time (push + prune) of a "
              f"{chunk}-frame chunk {mean_chunk:.1f} s (mean of {len(chunk_s)}): {share:.2%} "
              f"(requirement < {BOUNDARY_LIMIT:.0%}): {verdict(share < BOUNDARY_LIMIT)}")
    else:
        print(f"3. no chunk boundary inside {n} frames with --chunk-frames {chunk}: not measured")

    a0, a1 = long["attributes"][MARK], long["attributes"][n]
    changed = [(name, a0.get(name, [0, 0]), a1.get(name, [0, 0])) for name in dict.fromkeys([*a0, *a1])
               if a0.get(name) != a1.get(name)]
    print(f"\nsession attributes that changed between frame {MARK} and frame {n} (container items, tensor bytes):")
    for name, (i0, b0), (i1, b1) in changed:
        print(f"   {name}: {i0:,} items, {b0:,} B -> {i1:,} items, {b1:,} B")
    if not changed:
        print("   none")
    if long["decode_warning"]:
        print(f"decode warning: {long['decode_warning']}")
    print(f"\nmodel time {long['model_s']:.1f} s for {n} frames ({long['model_s'] / n:.3f} s/frame); "
          f"total {total_s:.0f} s")
    print(f"command: {command.strip()}")


if __name__ == "__main__":
    main()
