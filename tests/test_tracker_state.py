"""Tracker state codec and pruning: a restored tracker continues bit-identically, pruning is exact.

Real tiny model on the first 40 frames of a real clip at 320x180. Exactness is the measure: object
ids, scores (==) and masks (np.array_equal) of every frame equal those of one continuous run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import transformers

from pipeline.core.errors import ProcessingError
from tests import media
from workers.media.frame_objects import FrameObjects
from workers.model.loading import load_model
from workers.model.state_codec import (
    JSON_NAME,
    TENSORS_NAME,
    StateError,
    TrackerState,
    load_state,
    save_state,
)
from workers.model.state_pruning import MemoryWindows, prune
from workers.model.tracker import VideoTracker

REPO = Path(__file__).resolve().parents[1]
N = 40
CUTS = (5, 20, 33)  # 5: inside the first hotstart window (15 frames); 20, 33: after it
HEIGHT, WIDTH = 180, 320
PROMPTS = ["dog"]

# Tiny-model settings that make objects come and go: reconditioning adds conditioning frames every
# 4 frames (more than the 4 the tracker selects), duplicate/unmatched tracks are removed by hotstart
# (remove_object re-indexes the per-object state), unmatched and overlap lists fill up.
CHURN = dict(
    high_conf_thresh=0.0, high_iou_thresh=0.1, recondition_every_nth_frame=4,
    suppress_unmatched_only_within_hotstart=False, init_trk_keep_alive=2,
    assoc_iou_thresh=0.35, trk_assoc_iou_thresh=0.7, max_num_objects=5,
    hotstart_unmatch_thresh=15, hotstart_dup_thresh=15,
    # The tiny model's random detection masks all overlap: mask NMS (0.1) leaves one a frame and
    # hotstart removes nothing. This scenario needs the duplicate detections NMS would remove; hole
    # filling stays on, and with it no track went unmatched until trk_assoc_iou_thresh went from
    # 0.45 to 0.7.
    det_nms_thresh=0.0,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread, here and in the child process. CPU results depend on the thread count
    (2 threads and 1 thread give different masks), so every run compared must use the same count;
    and two threads on two shared cores slow down by up to 6x when another process is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    raw = subprocess.run(
        ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(media.DOG), "-frames:v", str(N),
         "-vf", f"scale={WIDTH}:{HEIGHT}", "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    return np.frombuffer(raw, np.uint8).reshape(N, HEIGHT, WIDTH, 3).copy()


def push_range(tracker: VideoTracker, frames: np.ndarray, start: int, stop: int, *, flush: bool,
               prune_each: bool = False) -> list[FrameObjects]:
    out: list[FrameObjects] = []
    for i in range(start, stop):
        out += tracker.push(i, frames[i])
        if prune_each:
            prune(tracker)
    if flush:
        out += tracker.flush()
    return out


def assert_same(expected: list[FrameObjects], got: list[FrameObjects]) -> None:
    assert [r.frame_idx for r in got] == [r.frame_idx for r in expected]
    for e, g in zip(expected, got):
        where = f"frame {e.frame_idx}"
        assert g.object_ids == e.object_ids, where
        assert g.scores == e.scores, where
        assert g.prompts == e.prompts, where
        assert g.masks.shape == e.masks.shape and np.array_equal(g.masks, e.masks), where


def dir_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.iterdir())


def run_baseline(loaded, frames, state_root: Path, cuts) -> SimpleNamespace:
    """One continuous run; the state is saved (read-only for the run) after each cut frame."""
    tracker = VideoTracker(loaded, PROMPTS, HEIGHT, WIDTH)
    results: list[FrameObjects] = []
    emitted: dict[int, int] = {}
    dirs: dict[int, Path] = {}
    for i in range(N):
        results += tracker.push(i, frames[i])
        if i in cuts:
            emitted[i] = len(results)
            dirs[i] = state_root / f"after_{i}"
            save_state(tracker, dirs[i])
    session = tracker.session
    results += tracker.flush()
    return SimpleNamespace(results=results, emitted=emitted, dirs=dirs, session=session)


@pytest.fixture(scope="module")
def baseline(tiny, frames, tmp_path_factory) -> SimpleNamespace:
    return run_baseline(tiny, frames, tmp_path_factory.mktemp("states"), set(CUTS) | {N - 1})


@pytest.fixture(scope="module")
def churn_model(tiny_model_dir):
    loaded = load_model(str(tiny_model_dir), "cpu")  # its own instance: `tiny` stays untouched
    for name, value in CHURN.items():
        setattr(loaded.model, name, value)
    return loaded


def test_the_baseline_tracks_objects(baseline):
    """Not vacuous: objects with non-empty masks in every frame, several in most, through frame 39."""
    assert [r.frame_idx for r in baseline.results] == list(range(N))
    assert all(r.object_ids for r in baseline.results)
    assert sum(len(r.object_ids) >= 2 for r in baseline.results) >= N - 5
    assert all(m.any() for r in baseline.results for m in r.masks)
    assert len(baseline.session.obj_ids) >= 2


@pytest.mark.parametrize("cut", CUTS)
def test_a_restored_tracker_continues_bit_identically(tiny, frames, baseline, cut):
    tracker = load_state(baseline.dirs[cut], tiny)
    assert TrackerState.from_files(baseline.dirs[cut]).last_frame_idx == cut
    continued = baseline.results[: baseline.emitted[cut]] + push_range(tracker, frames, cut + 1, N, flush=True)
    assert_same(baseline.results, continued)


def pruned_in_pieces(model, frames, cuts: list[int], tmp_path) -> tuple[list, VideoTracker]:
    """Push frames up to each cut with pruning after every frame, then save the state to files and
    load it into a new tracker; returns the results so far and the last tracker."""
    tracker = VideoTracker(model, PROMPTS, HEIGHT, WIDTH)
    out, start = [], 0
    for cut in cuts:
        out += push_range(tracker, frames, start, cut, flush=False, prune_each=True)
        save_state(tracker, tmp_path / f"cut{cut}")
        tracker = load_state(tmp_path / f"cut{cut}", model)
        start = cut
    return out, tracker


def test_pruning_every_frame_is_exact_and_keeps_the_state_small(tiny, frames, baseline, tmp_path):
    """Prune after every push, and carry the pruned state through files at frames 20 and 33."""
    out, tracker = pruned_in_pieces(tiny, frames, [21, 34], tmp_path)
    out += push_range(tracker, frames, 34, N, flush=False, prune_each=True)
    save_state(tracker, tmp_path / "last")
    out += tracker.flush()
    assert_same(baseline.results, out)

    pruned, unpruned = dir_size(tmp_path / "last"), dir_size(baseline.dirs[N - 1])
    print(f"\nstate after {N} frames: unpruned {unpruned / 1e6:.2f} MB, pruned {pruned / 1e6:.2f} MB "
          f"({unpruned / pruned:.1f}x smaller)")
    assert pruned * 5 < unpruned
    # Bounded: the pruned state holds at most the memory/pointer windows of non-conditioning frames.
    windows = MemoryWindows.of(tiny.model)
    for outputs in tracker.session.output_dict_per_obj.values():
        assert len(outputs["non_cond_frame_outputs"]) <= max(windows.maskmem_frames, windows.pointer_frames)


def test_churning_objects_survive_restores_and_pruning(churn_model, frames, tmp_path):
    """Objects added, reconditioned, removed and re-indexed: restore plain and pruned states."""
    base = run_baseline(churn_model, frames, tmp_path, {20})
    session = base.session
    assert session.removed_obj_ids, "hotstart removed no object: the scenario does not churn"
    assert session.max_obj_id + 1 > len(session.obj_ids)
    assert max(len(o["cond_frame_outputs"]) for o in session.output_dict_per_obj.values()) > 4
    assert session.overlap_pair_to_frame_inds and session.unmatched_frame_inds
    assert sum(len(r.object_ids) for r in base.results) > 0

    tracker = load_state(base.dirs[20], churn_model)
    assert_same(base.results, base.results[: base.emitted[20]] + push_range(tracker, frames, 21, N, flush=True))

    out, tracker = pruned_in_pieces(churn_model, frames, [13, 28], tmp_path)
    out += push_range(tracker, frames, 28, N, flush=True, prune_each=True)
    assert_same(base.results, out)


_CHILD = """
import sys
import numpy as np
import torch
from workers.model.loading import load_model
from workers.model.state_codec import load_state

torch.set_num_threads(1)  # as in the parent: CPU results depend on the thread count

model_dir, state_dir, frames_path, start, out_path = sys.argv[1:]
loaded = load_model(model_dir, "cpu")
tracker = load_state(state_dir, loaded)
frames = np.load(frames_path)
results = []
for i in range(int(start), len(frames)):
    results += tracker.push(i, frames[i])
results += tracker.flush()
arrays = {"frame_idx": np.array([r.frame_idx for r in results], dtype=np.int64)}
for r in results:
    arrays[f"ids_{r.frame_idx}"] = np.array(r.object_ids, dtype=np.int64)
    arrays[f"scores_{r.frame_idx}"] = np.array(r.scores, dtype=np.float64)
    arrays[f"masks_{r.frame_idx}"] = r.masks
np.savez(out_path, **arrays)
"""


def test_a_state_continues_in_another_process(tiny_model_dir, frames, baseline, tmp_path):
    cut = 20
    np.save(tmp_path / "frames.npy", frames)
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir), str(baseline.dirs[cut]), str(tmp_path / "frames.npy"),
         str(cut + 1), str(tmp_path / "out.npz")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.load(tmp_path / "out.npz")  # allow_pickle=False
    expected = baseline.results[baseline.emitted[cut]:]
    assert got["frame_idx"].tolist() == [r.frame_idx for r in expected]
    for r in expected:
        assert got[f"ids_{r.frame_idx}"].tolist() == r.object_ids
        assert got[f"scores_{r.frame_idx}"].tolist() == r.scores
        assert np.array_equal(got[f"masks_{r.frame_idx}"], r.masks), f"frame {r.frame_idx}"


# --- damaged and mismatched states ----------------------------------------------------------------

def _edit_json(directory: Path, edit) -> None:
    path = directory / JSON_NAME
    doc = json.loads(path.read_text())
    edit(doc)
    path.write_text(json.dumps(doc))


def _first_tensor_spec(doc: dict) -> dict:
    return doc["session"]["values"]["output_dict_per_obj"]["dict"][0][1]["dict"][0][1]["dict"][0][1]["dict"][0][1]


def _truncate(d: Path) -> None:
    path = d / TENSORS_NAME
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_byte(d: Path) -> None:
    path = d / TENSORS_NAME
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _set_shape(doc: dict) -> None:
    spec = _first_tensor_spec(doc)
    spec["shape"] = [*spec["shape"][:-1], spec["shape"][-1] + 1]


def _set_dtype(doc: dict) -> None:
    spec = _first_tensor_spec(doc)
    spec["dtype"] = "float16" if spec["dtype"] != "float16" else "float32"


def _rename_tensor(doc: dict) -> None:
    _first_tensor_spec(doc)["tensor"] = "no/such/tensor"


DAMAGE = {
    "truncated safetensors": (_truncate, TENSORS_NAME, "truncated"),
    "corrupted safetensors": (_flip_a_byte, TENSORS_NAME, "sha256"),
    "missing safetensors": (lambda d: (d / TENSORS_NAME).unlink(), TENSORS_NAME, "missing"),
    "missing json": (lambda d: (d / JSON_NAME).unlink(), JSON_NAME, "missing"),
    "invalid json": (lambda d: (d / JSON_NAME).write_text('{"format": "sam3v.tracker-st'), JSON_NAME, "not valid JSON"),
    "wrong format": (lambda d: _edit_json(d, lambda doc: doc.update(format="something-else")), JSON_NAME,
                     "not a tracker state"),
    "newer version": (lambda d: _edit_json(d, lambda doc: doc.update(version=2)), JSON_NAME, "version 2"),
    "other transformers": (lambda d: _edit_json(d, lambda doc: doc.update(transformers_version="5.99.0")),
                           JSON_NAME, "transformers '5.99.0'"),
    "missing key": (lambda d: _edit_json(d, lambda doc: doc["session"]["values"].pop("obj_ids")), JSON_NAME,
                    "missing ['obj_ids']"),
    "missing section": (lambda d: _edit_json(d, lambda doc: doc.pop("tracker")), JSON_NAME, "'tracker'"),
    "shape mismatch": (lambda d: _edit_json(d, _set_shape), JSON_NAME, "the document records"),
    "dtype mismatch": (lambda d: _edit_json(d, _set_dtype), JSON_NAME, "the document records"),
    "unknown tensor": (lambda d: _edit_json(d, _rename_tensor), JSON_NAME, "missing from the safetensors file"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_state_is_refused_with_a_clear_message(baseline, tmp_path, damage):
    mutate, names_file, problem = DAMAGE[damage]
    directory = tmp_path / "state"
    shutil.copytree(baseline.dirs[5], directory)
    mutate(directory)
    with pytest.raises(StateError) as info:
        TrackerState.from_files(directory)
    message = str(info.value)
    assert names_file in message and problem in message, message
    assert isinstance(info.value, ValueError) and isinstance(info.value, ProcessingError)


def test_an_unknown_session_attribute_fails_the_capture(tiny, frames):
    tracker = VideoTracker(tiny, PROMPTS, HEIGHT, WIDTH)
    tracker.push(0, frames[0])
    tracker.session.new_state_from_a_future_transformers = {}
    with pytest.raises(StateError, match="session layout the pinned transformers version does not have"):
        TrackerState.capture(tracker)
    del tracker.session.new_state_from_a_future_transformers
    tracker.extra = 1
    with pytest.raises(StateError, match=r"VideoTracker has attribute\(s\) \['extra'\]"):
        TrackerState.capture(tracker)


def test_a_tracker_saved_before_its_first_frame_restores(tiny, frames):
    fresh = VideoTracker(tiny, PROMPTS, HEIGHT, WIDTH)
    state = TrackerState.from_bytes(*TrackerState.capture(fresh).to_bytes())
    assert state.last_frame_idx is None
    restored = state.restore(tiny)
    assert_same(push_range(fresh, frames, 0, 3, flush=True), push_range(restored, frames, 0, 3, flush=True))


def test_a_state_is_refused_by_another_model(tiny, baseline):
    state = TrackerState.from_files(baseline.dirs[5])
    state.document["model"]["revision"] = "local-0000000000000000"
    with pytest.raises(StateError, match="only continues on the model that wrote it"):
        state.restore(tiny)


def test_files_are_written_atomically_and_round_trip_as_bytes(baseline, tmp_path):
    state = TrackerState.from_files(baseline.dirs[20])
    state.to_files(tmp_path)
    state.to_files(tmp_path)  # overwriting an existing state
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([JSON_NAME, TENSORS_NAME])
    doc = json.loads((tmp_path / JSON_NAME).read_text())
    assert (doc["format"], doc["version"], doc["transformers_version"]) == (
        "sam3v.tracker-state", 1, transformers.__version__)
    document, tensors = state.to_bytes()
    again = TrackerState.from_bytes(document, tensors)
    assert again.document["session"] == state.document["session"]
    assert again.tensors.keys() == state.tensors.keys()
    assert all(again.tensors[k].equal(v) for k, v in state.tensors.items())
    with pytest.raises(StateError, match="truncated"):
        TrackerState.from_bytes(document, tensors[:-10])
    state.tensors["stray"] = torch.zeros(2)
    with pytest.raises(StateError, match="tensors the document does not reference: \\['stray'\\]"):
        TrackerState.from_bytes(*state.to_bytes())
