"""Extra memory of serving visual prompts with the one loaded model (issue 22), on CPU.

Each configuration runs in a fresh child process (its peak RSS, ru_maxrss, is its own): load the
model, decode ``--frames`` frames of a real clip, push them through one ``VideoTracker`` with the
text prompt "dog" and 0..N visual objects (boxes on frame 0), then the backward pass of an object
prompted on the last frame. It prints the RSS after loading, the peak, the model's parameter bytes
(the same with visual objects: no second model), and the tensor bytes of the visual session's
state at the end (its memory per object and frame; the visual session is not pruned yet).

Run: .venv/bin/python -m benchmarks.bench_visual_memory [--model DIR] [--frames 16] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CLIP = Path(__file__).resolve().parents[2] / "shared" / "videos" / "01_dog.mp4"


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def _tensor_bytes(value) -> int:
    import torch

    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def child(model_dir: str, frames: int, objects: int, backward: bool, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from pipeline.core.visual_prompts import ObjectPrompt
    from workers.chunks.backward_pass import backward_pass
    from workers.media.decode import open_reader
    from workers.media.probe import probe
    from workers.model.loading import load_model
    from workers.model.tracker import VideoTracker
    from workers.model.visual_objects import visual_objects

    loaded = load_model(model_dir, "cpu")
    params = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    info = probe(CLIP, CLIP.name)
    with open_reader(info, 0, frames) as reader:
        rgbs = [f.rgb for f in reader]
    after_load = _rss_mib()
    prompts = [ObjectPrompt(frame=0, box=[100.0 + 150 * i, 150.0, 250.0, 300.0]) for i in range(objects)]
    visual = visual_objects(prompts, 0, info.height, info.width, frames)
    started = time.perf_counter()
    back = {}
    if backward:
        back = backward_pass(loaded, info, visual_objects([ObjectPrompt(frame=frames - 1, box=[400.0, 200.0, 300.0, 300.0])],
                                                          0, info.height, info.width, frames), 0)
    tracker = VideoTracker(loaded, ["dog"], info.height, info.width, visual=visual or None, num_frames=frames)
    for i, rgb in enumerate(rgbs):
        tracker.push(i, rgb)
    tracker.flush()
    seconds = time.perf_counter() - started
    assert sum(p.numel() * p.element_size() for p in loaded.model.parameters()) == params
    visual_state = _tensor_bytes(tracker.visual.session.output_dict_per_obj) if tracker.visual else 0
    return {"objects": objects, "backward": backward, "frames": frames, "param_mib": params / 2**20,
            "rss_after_load_mib": round(after_load, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "visual_state_mib": round(visual_state / 2**20, 2), "backward_frames": len(back),
            "seconds": round(seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: a tiny random one, made here)")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        objects, backward = json.loads(args.child)
        print(json.dumps(child(args.model, args.frames, objects, backward, args.threads)))
        return
    model = args.model
    if model is None:
        from workers.model.tiny_model import save_tiny_model

        model = str(save_tiny_model(Path("/tmp/sam3v-bench-visual-tiny")))
    for objects, backward in ((0, False), (1, False), (4, False), (4, True)):
        out = subprocess.run([sys.executable, "-m", "benchmarks.bench_visual_memory", "--model", model,
                              "--frames", str(args.frames), "--threads", str(args.threads),
                              "--child", json.dumps([objects, backward])], capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
