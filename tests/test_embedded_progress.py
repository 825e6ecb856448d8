"""Embedded `sam3v run` progress (issue 12): bad files are reported as soon as their probe fails,
before any good video ends, on a terminal (rich's live bars, through a pseudo-terminal) and in a
log; the frame total is shown only once every video is planned ("estimating" before), so it never
grows. The real embedded runner and the tiny model throughout."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from sam3v.cli.job_progress import ESTIMATING, Estimator
from tests import media
from tests.terminal import run_on_terminal

# A frames bar as drawn: done/total ("?": unknown) and its ETA (a log line may follow it).
FRAMES = re.compile(r"^frames\b.*?\s(\d+)/(\d+|\?)\s.*ETA\s*(estimating|[-\d:]+)?")


def _env(tmp_path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("SAM3V_BROKER_URL", "SAM3V_REDIS_URL")}
    env.update({"SAM3V_CACHE": str(tmp_path / "cache"), "SAM3V_TORCH_THREADS": "1"})
    return env


def _manifest(path, lines: list[dict]):
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return path


def test_on_a_terminal_failures_come_at_once_and_the_frame_total_never_grows(dog24, media_dir, tiny_model_dir,
                                                                            tmp_path):
    manifest = _manifest(tmp_path / "m.jsonl", [
        {"id": "gone", "video": str(tmp_path / "missing.mp4")},
        {"id": "a", "video": str(dog24), "max_frames": 8, "chunk_frames": 4},
        {"id": "b", "video": str(dog24), "max_frames": 6, "chunk_frames": 3},
        {"id": "noise", "video": str(media.random_bytes(media_dir))},  # last: probed last
    ])
    done = run_on_terminal([sys.executable, "-m", "sam3v.cli", "run", str(manifest), "--out", str(tmp_path / "out"),
                            "--prompt", "dog", "--model", str(tiny_model_dir)], _env(tmp_path))
    assert done.returncode == 1, done.terminal  # partial
    text = done.terminal.replace("\r", "\n")  # rich redraws its bars after a carriage return
    first_ok = re.search(r"^videos .*\s[1-9]\d* ok,", text, re.M)
    assert first_ok, text
    for failure in ("video gone failed: no such file", "video noise failed:"):
        said = re.search("^" + failure, text, re.M)  # our line, not the worker's log record
        assert said, text
        assert said.start() < first_ok.start(), f"{failure!r} said only after a video succeeded:\n{text}"
    renders = [m.groups() for m in map(FRAMES.match, text.splitlines()) if m]
    assert renders, text
    totals = [int(total) for _, total, _ in renders if total != "?"]
    assert set(totals) == {14}, f"the frame total changed: {sorted(set(totals))}"
    first_total = next(i for i, (_, total, _) in enumerate(renders) if total != "?")
    assert all(total != "?" for _, total, _ in renders[first_total:]), "the total went back to unknown"
    assert all(eta == ESTIMATING for _, total, eta in renders if total == "?"), "an ETA before the total was known"
    # The embedded worker probes every video before it segments a frame (sam3v/embedded_broker.py).
    assert all(done == "0" for done, total, _ in renders if total == "?"), "frames segmented before every probe"
    assert renders[-1] == ("14", "14", "0:00:00"), renders[-1]


def test_in_a_log_failures_come_before_the_good_videos(dog24, media_dir, tiny_model_dir, tmp_path):
    manifest = _manifest(tmp_path / "m.jsonl", [
        {"id": "a", "video": str(dog24), "max_frames": 8, "chunk_frames": 4},
        {"id": "b", "video": str(dog24), "max_frames": 6, "chunk_frames": 3},
        {"id": "gone", "video": str(tmp_path / "missing.mp4")},
        {"id": "noise", "video": str(media.random_bytes(media_dir))},
    ])
    done = subprocess.run([sys.executable, "-m", "sam3v.cli", "run", str(manifest), "--out", str(tmp_path / "out"),
                           "--prompt", "dog", "--model", str(tiny_model_dir)], env=_env(tmp_path),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr
    job = done.stdout.strip().splitlines()[-1]
    states = [line.split()[2:4] for line in done.stdout.splitlines() if line.split()[1:2] == [job]
              and len(line.split()) > 3 and line.split()[2] in ("a", "b", "gone", "noise")]
    assert sorted(states) == [["a", "succeeded"], ["b", "succeeded"], ["gone", "failed"], ["noise", "failed"]], \
        done.stdout
    assert {s for _, s in states[:2]} == {"failed"}, f"a bad file said after a good video ended:\n{done.stdout}"


def _doc(total: int, planned: int | None, frames_done: int, frames_total: int, queued: int = 0) -> dict:
    return {"total": total, "videos_planned": planned, "frames_done": frames_done, "frames_total": frames_total,
            "counts": {"queued": queued, "processing": total - queued, "succeeded": 0, "failed": 0, "cancelled": 0}}


def test_the_estimator_waits_for_every_plan():
    est = Estimator()
    early = est.view(_doc(total=3, planned=2, frames_done=5, frames_total=20), now=0.0)
    assert (early.frames_total, early.eta) == (None, ESTIMATING)  # 20 is two videos' frames, not the job's
    planned = est.view(_doc(total=3, planned=3, frames_done=5, frames_total=30), now=10.0)
    assert (planned.frames_total, planned.eta) == (30, ESTIMATING)  # no rate measured on the final total yet
    later = est.view(_doc(total=3, planned=3, frames_done=15, frames_total=30), now=20.0)
    assert (later.frames_total, later.rate, later.eta) == (30, 1.0, "0:00:15")
    # A job recorded before the planned count: final once no video waits for its probe.
    old = Estimator()
    assert old.view(_doc(total=2, planned=None, frames_done=0, frames_total=10, queued=1), now=0).frames_total is None
    assert old.view(_doc(total=2, planned=None, frames_done=0, frames_total=20, queued=0), now=1).frames_total == 20
