"""`sam3v run`: the README's main job, with the in-process broker and worker and local storage."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests import media
from tests.guards import assert_found_objects


def test_run_manifest_embedded(media_dir, tiny_model_dir, tmp_path):
    clip = media.clip(media_dir, 10)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"id": "dog", "video": str(clip), "max_frames": 8, "chunk_frames": 5}),
        json.dumps({"id": "bad", "video": str(clip), "max_frames": -1}),
    ]) + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM3V_")}
    done = subprocess.run([sys.executable, "-m", "sam3v.cli", "run", str(manifest), "--out", str(tmp_path / "out"),
                           "--prompt", "dog", "--model", str(tiny_model_dir)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    job = done.stdout.strip().splitlines()[-1]
    # Not a terminal: each finished video and each rejected line is a timestamped line on stdout.
    assert f" {job} line 2 rejected: max_frames" in done.stdout, done.stdout
    out = tmp_path / "out" / job
    doc = json.loads((out / "dog" / "masks.json").read_text())
    assert doc["video"]["num_frames"] == 8
    assert_found_objects(doc)  # the tasks ran the model, and it found something
    assert (out / "dog" / "overlay.mp4").stat().st_size > 0
    assert not (out / "dog" / "work").exists()
    results = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    # First, middle and last frame with objects: fewer when fewer frames have any.
    thumbs = [str(out / "dog" / f"thumb-{n}.webp") for n in range(1, len(results[0]["thumbnails"]) + 1)]
    assert 1 <= len(thumbs) <= 3
    assert 0 < results[0]["seconds"] < 600
    assert results == [{"line": 1, "id": "dog", "source": str(clip), "state": "succeeded", "error": None, "frames": 8,
                        "objects": len(doc["objects"]),
                        "outputs": {"masks": str(out / "dog" / "masks.json"), "overlay": str(out / "dog" / "overlay.mp4")},
                        "objects_by_prompt": {"dog": len(doc["objects"])}, "thumbnails": thumbs,
                        "seconds": results[0]["seconds"]},
                       {"line": 2, "id": None, "source": str(clip), "state": "rejected",
                        "error": results[1]["error"], "frames": 0, "objects": None, "outputs": {},
                        "objects_by_prompt": None, "thumbnails": [], "seconds": None}]
    assert results[1]["error"].startswith("max_frames")
