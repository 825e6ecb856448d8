"""The GPU engine on CPU, with the tiny model and real clips: batching never changes results.

- Frame batch B = 8 gives the masks.json of B = 1 (batched features differ by ~1e-6 on CPU; the
  masks do not). When they ever differ, the failure names the first differing frame and the largest
  feature difference between batched and one-by-one features.
- Chunked == unchunked at B = 8, for chunk sizes that cut detector groups (7, 20), and for a run
  that starts part-way: a chunk decodes its first and last groups whole (``Feed`` context frames),
  so its backbone calls hold exactly the frames of the unchunked run's calls (on CPU batch make-up
  does not change masks, so the calls themselves are compared).
- K streams interleaved in one process around one engine give each video exactly the masks.json of
  its own run, with different lengths, one chunked, one failing mid-way. Two streams' groups meet
  in one backbone call and their tracker steps run at the same time.
- Out of memory while preparing pixels, restoring a chunk's state, in a step or in the flush
  becomes the engine's ``OutOfMemory``; the chunk runs again alone and the video's masks.json
  equals the clean run's.
"""

from __future__ import annotations

import gc
import json
import threading
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.core.errors import InputError
from pipeline.core.layout import WorkKeys
from pipeline.core.planning import Chunk
from pipeline.core.specs import VideoOptions
from pipeline.core.storage import LocalStorage
from tests import media
from tests.guards import assert_found_objects
from tests.inject_oom.oom_points import PLACES, patch
from workers.chunks.chunk_runner import run_chunk_inputs
from workers.chunks.video_steps import VideoRun, segment_video
from workers.media.decode import open_reader
from workers.media.probe import probe
from workers.model import frame_features
from workers.model.engine import FrameEngine, OutOfMemory, engine_for
from workers.model.tracker import VideoTracker, preprocess

N = 40
W, H = 426, 240
SHARED = media.DOG.parent


def _clip(folder: Path, source: Path, frames: int, name: str) -> Path:
    path = folder / name
    media.ffmpeg("-i", source, "-frames:v", str(frames), "-vf", f"scale={W}:{H}", "-c:v", "libx264", "-an", path)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("frame-batch")
    return {"dog": _clip(folder, media.DOG, N, "dog.mp4"),
            "cups": _clip(folder, SHARED / "02_cups.mp4", 30, "cups.mp4"),
            "bedroom": _clip(folder, SHARED / "bedroom.mp4", 20, "bedroom.mp4")}


def masks_json(clip: Path, loaded, tmp: Path, frame_batch: int, **opts) -> bytes:
    return segmented(clip, loaded, tmp, frame_batch, **opts)[0]


def segmented(clip: Path, loaded, tmp: Path, frame_batch: int, **opts) -> tuple[bytes, set[tuple[int, ...]]]:
    """masks.json, and the model frames of each backbone call the run made (each call's frames)."""
    out = tmp / f"b{frame_batch}-{opts.get('chunk_frames')}-{opts.get('start_frame', 0)}-{clip.stem}"
    engine = engine_for(loaded)
    engine.calls.clear()
    segment_video(clip, loaded, VideoOptions(outputs=["rle"], **opts), ["dog"], LocalStorage(out),
                  frame_batch=frame_batch)
    calls = {tuple(i for _, frames in call for i in frames) for call in engine.calls}
    return (out / "masks.json").read_bytes(), calls


def first_difference(a: bytes, b: bytes) -> str:
    fa, fb = json.loads(a)["frames"], json.loads(b)["frames"]
    for x, y in zip(fa, fb):
        if x != y:
            return f"frame {x.get('frame', x.get('frame_idx'))}"
    return f"frame counts {len(fa)} vs {len(fb)}" if len(fa) != len(fb) else "the header"


def feature_difference(loaded, clip: Path, batch: int) -> float:
    """Largest |batched - one by one| over the first ``batch`` frames' features."""
    info = probe(clip)
    with open_reader(info, start=0, count=batch) as reader:
        pixels = torch.stack([preprocess(f.rgb, loaded.image_size, loaded.device) for f in reader])
    worst = 0.0
    with torch.inference_mode():
        together = frame_features.compute(loaded.model, pixels)
        for i in range(pixels.shape[0]):
            alone = frame_features.compute(loaded.model, pixels[i:i + 1])[0]
            pairs = zip([together[i].vision_embeds.last_hidden_state, *together[i].tracker_feats],
                        [alone.vision_embeds.last_hidden_state, *alone.tracker_feats])
            worst = max(worst, max(float((x - y).abs().max()) for x, y in pairs))
    return worst


@pytest.mark.parametrize("name", ["dog", "cups"])
def test_frame_batch_8_gives_the_masks_of_frame_batch_1(tiny, clips, tmp_path, name):
    one = masks_json(clips[name], tiny, tmp_path, 1)
    eight = masks_json(clips[name], tiny, tmp_path, 8)
    assert json.loads(one)["frames"], "the clip gave no frames"
    assert any(f.get("objects") for f in json.loads(one)["frames"]), "no objects: the comparison proves nothing"
    if one != eight:
        pytest.fail(f"B=8 differs from B=1 first at {first_difference(one, eight)}; largest feature difference "
                    f"batched vs one by one: {feature_difference(tiny, clips[name], 8):.3g}")


@pytest.fixture(scope="module")
def unchunked8(tiny, clips, tmp_path_factory):
    """start_frame -> the unchunked run's (masks.json, backbone calls), each run once when first asked."""
    tmp, runs = tmp_path_factory.mktemp("unchunked8"), {}

    def run(start_frame: int) -> tuple[bytes, set[tuple[int, ...]]]:
        if start_frame not in runs:
            runs[start_frame] = segmented(clips["dog"], tiny, tmp, 8, start_frame=start_frame)
        return runs[start_frame]

    return run


@pytest.mark.parametrize("chunk_frames,start_frame", [(7, 0), (20, 0), (6, 5), (7, 24)])
def test_chunked_equals_unchunked_at_frame_batch_8(tiny, clips, unchunked8, tmp_path, chunk_frames, start_frame):
    chunked, calls = segmented(clips["dog"], tiny, tmp_path, 8, chunk_frames=chunk_frames, start_frame=start_frame)
    want, want_calls = unchunked8(start_frame)
    assert chunked == want, first_difference(chunked, want)
    # The groups on the video's grid, [0, 8), [8, 16), ... (the last one cut at the end of the video):
    assert all(c[0] % 8 == 0 and list(c) == list(range(c[0], c[-1] + 1)) for c in want_calls), want_calls
    # Each chunk computed whole groups (its context frames included): the calls of the unchunked run,
    # some twice (the group a chunk boundary cuts is computed by both chunks).
    assert calls == want_calls, f"chunked calls {sorted(calls)} vs unchunked {sorted(want_calls)}"


# --- K streams in one process ----------------------------------------------------------------------

class _FailAt:
    """A chunk's ``should_stop`` that raises, as a broken input would, once ``frames`` frames ran."""

    def __init__(self, frames: int):
        self.left = frames

    def __call__(self) -> bool:
        self.left -= 1
        if self.left < 0:
            raise InputError("the input broke mid-way (test)")
        return False


def _run_video(loaded, clip: Path, out: Path, chunk_frames: int | None, engine: FrameEngine,
               should_stop=None, out_of_memory: list | None = None) -> bytes | None:
    """All chunks of one video through ``engine`` (as a worker's chunks would), then masks.json.
    A chunk that runs out of memory runs again alone; ``out_of_memory`` collects (chunk, error)."""
    out_of_memory = [] if out_of_memory is None else out_of_memory
    from workers.chunks.video_steps import document_header, finalize, prepare

    opts = VideoOptions(outputs=["rle"], chunk_frames=chunk_frames)
    plan = prepare(clip, opts, clip.name, None)
    video = VideoRun(plan.info, opts, ["dog"], plan.num_frames, frame_batch=8)
    work, artifacts = WorkKeys(), LocalStorage(out / "work")
    for chunk in plan.chunks:
        failed = None
        try:
            run_chunk_inputs(video.inputs(chunk), loaded, artifacts, work, should_stop=should_stop, engine=engine)
        except OutOfMemory as err:  # as a worker does: the chunk runs again from its input state, alone
            failed = err
        if failed is not None:
            assert not failed.alone, failed
            out_of_memory.append((chunk.index, str(failed)))
            with engine.exclusive.alone():
                run_chunk_inputs(video.inputs(chunk), loaded, artifacts, work, should_stop=should_stop, engine=engine,
                                 alone=True)
    model, params = document_header(loaded, opts, ["dog"])
    finalize(plan.info, {"model": model, "params": params, "prompts": ["dog"]}, artifacts, work, len(plan.chunks),
             LocalStorage(out), "", 64)
    return (out / "masks.json").read_bytes()


def test_streams_interleaved_give_each_video_its_own_masks(tiny, clips, tmp_path):
    plan = {"dog": (None, None), "cups": (10, None), "bedroom": (None, _FailAt(9))}
    alone = {}
    for name, (chunk_frames, _) in plan.items():
        if name != "bedroom":
            alone[name] = _run_video(tiny, clips[name], tmp_path / "alone" / name, chunk_frames, FrameEngine(tiny))
    engine = FrameEngine(tiny, max_batch=16)
    together, errors = {}, {}
    start = threading.Barrier(len(plan))

    def drive(name: str) -> None:
        chunk_frames, stop = plan[name]
        start.wait()
        try:
            together[name] = _run_video(tiny, clips[name], tmp_path / "together" / name, chunk_frames, engine, stop)
        except Exception as err:  # the failing one
            errors[name] = err

    threads = [threading.Thread(target=drive, args=(name,)) for name in plan]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a stream never finished"
    assert set(errors) == {"bedroom"} and "mid-way" in str(errors["bedroom"]), errors
    for name in ("dog", "cups"):
        assert together[name] == alone[name], f"{name}: {first_difference(together[name], alone[name])}"
    # Every frame went through the engine's backbone (dog's 40, cups' 30, bedroom's until it failed),
    # and groups of different streams met in one call (the look-ahead: calls larger than one group).
    assert sum(engine.batches) >= N + 30 and max(engine.batches) > 8, engine.batches


# --- the engine's parts ------------------------------------------------------------------------------

def _pixels(loaded, n: int, seed: int) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    return torch.stack([preprocess(rng.integers(0, 255, (H, W, 3), dtype=np.uint8), loaded.image_size, loaded.device)
                        for _ in range(n)])


def waiting_together(engine: FrameEngine, calls: list) -> None:
    """Run ``calls`` (each asks the engine for features) in threads while a backbone call is
    running, so that all of them wait for the next one together; returns once all are done."""
    with engine._backbone:
        threads = [threading.Thread(target=call) for call in calls]
        for t in threads:
            t.start()
        while len(engine._pending) < len(calls):
            threading.Event().wait(0.01)
    for t in threads:
        t.join(timeout=60)


def test_waiting_groups_of_several_streams_share_one_backbone_call(tiny):
    engine = FrameEngine(tiny, max_batch=16)
    results = {}
    waiting_together(engine, [lambda s=s: results.__setitem__(s, engine.features(_pixels(tiny, 8, s))) for s in (1, 2)])
    assert engine.batches == [16]
    alone = FrameEngine(tiny).features(_pixels(tiny, 8, 2))
    assert all(torch.allclose(a.vision_embeds.last_hidden_state, b.vision_embeds.last_hidden_state, atol=1e-5)
               for a, b in zip(results[2], alone))


def test_out_of_memory_in_a_batched_call_splits_it_and_still_gives_every_frame(tiny, monkeypatch):
    real = frame_features.compute

    def small_memory(model, pixels):
        if pixels.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (test: more than 2 frames)")
        return real(model, pixels)

    monkeypatch.setattr(frame_features, "compute", small_memory)
    engine = FrameEngine(tiny, max_batch=16)
    out = engine.features(_pixels(tiny, 8, 3))
    assert len(out) == 8 and max(engine.batches) <= 2
    monkeypatch.setattr(frame_features, "compute", real)
    expected = FrameEngine(tiny).features(_pixels(tiny, 8, 3))
    for a, b in zip(out, expected):
        assert torch.allclose(a.vision_embeds.last_hidden_state, b.vision_embeds.last_hidden_state, atol=1e-5)


def test_out_of_memory_in_a_tracker_step_fails_only_that_stream(tiny, monkeypatch):
    engine = FrameEngine(tiny)
    victims = [VideoTracker(tiny, ["dog"], H, W), VideoTracker(tiny, ["dog"], H, W)]
    real_step = VideoTracker.step

    def step(self, frame_idx, pixels, features=None):
        if any(self is v for v in victims) and frame_idx == 3:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return real_step(self, frame_idx, pixels, features)

    monkeypatch.setattr(VideoTracker, "step", step)
    frames = np.random.default_rng(4).integers(0, 255, (8, H, W, 3), dtype=np.uint8)

    def run(stream) -> int:
        done = sum(len(stream.push(i, frames[i])) for i in range(8))
        return done + len(stream.finish())

    with pytest.raises(OutOfMemory) as caught:
        run(engine.open_feed(victims[0], 4))
    assert not caught.value.alone  # beside others: its chunk runs again alone, not counted
    assert run(engine.open_feed(VideoTracker(tiny, ["dog"], H, W), 4)) == 8  # the engine goes on
    with engine.exclusive.alone():
        with pytest.raises(OutOfMemory) as again:
            run(engine.open_feed(victims[1], 4, alone=True))
    assert again.value.alone  # alone too: this one counts against the chunk's redeliveries


def test_one_engine_per_loaded_model(tiny):
    assert engine_for(tiny) is engine_for(tiny)


def test_a_chunk_that_runs_alone_keeps_other_streams_out(tiny):
    engine = FrameEngine(tiny)
    entered = threading.Event()

    def stream_group() -> None:
        with engine.exclusive.shared():
            entered.set()

    with engine.exclusive.alone():
        t = threading.Thread(target=stream_group)
        t.start()
        assert not entered.wait(0.3), "a stream ran while a chunk had the engine to itself"
    assert entered.wait(10)
    t.join()


def test_a_group_that_cannot_fit_fails_alone_and_the_others_get_their_features(tiny, monkeypatch):
    real = frame_features.compute
    big = _pixels(tiny, 4, 5)

    def no_room_for_big(model, pixels):
        if pixels.shape[0] > 4 or any(torch.equal(p, big[0]) for p in pixels):
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return real(model, pixels)

    monkeypatch.setattr(frame_features, "compute", no_room_for_big)
    engine = FrameEngine(tiny, max_batch=16)
    results, errors = {}, {}

    def ask(name, pixels):
        try:
            results[name] = engine.features(pixels)
        except OutOfMemory as err:
            errors[name] = err

    small = _pixels(tiny, 4, 6)
    waiting_together(engine, [lambda: ask("big", big), lambda: ask("small", small)])
    assert set(errors) == {"big"} and len(results["small"]) == 4


def test_two_streams_groups_meet_in_one_backbone_call_and_their_steps_overlap(tiny):
    """Each stream asks for its next group before tracking the one before, so the first group of
    both is waiting when either needs it: one call holds both. Then each stream's step of frame 3
    waits inside the step for the other's: with steps serialized (a lock) that would never happen."""
    engine = FrameEngine(tiny, max_batch=16)
    frames = np.random.default_rng(7).integers(0, 255, (16, H, W, 3), dtype=np.uint8)
    asked, inside = threading.Barrier(2, timeout=30), threading.Barrier(2, timeout=30)
    real_step, errors = VideoTracker.step, []

    def step(self, frame_idx, pixels, features=None):
        if frame_idx == 3:
            inside.wait()  # both streams are inside a tracker step at once
        return real_step(self, frame_idx, pixels, features)

    def drive(stream) -> None:
        try:
            for i in range(8):
                stream.push(i, frames[i])
            assert not engine.calls, "a stream computed its group at once, before it had another to ask for"
            asked.wait()  # both asked for group [0, 8); neither tracked it yet
            for i in range(8, 16):
                stream.push(i, frames[i])
            stream.finish()
        except Exception as err:
            errors.append(err)

    streams = [engine.open_feed(VideoTracker(tiny, ["dog"], H, W), 8, name=n) for n in ("a", "b")]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VideoTracker, "step", step)
        threads = [threading.Thread(target=drive, args=(s,)) for s in streams]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
    assert not errors, errors
    first = engine.calls[0]
    assert sorted(name.split("-")[0] for name, _ in first) == ["a", "b"], list(engine.calls)
    assert all(frames == tuple(range(8)) for _, frames in first)
    assert engine.batches[0] == 16 and len(engine.calls) == 2, list(engine.calls)


def test_a_frames_features_are_its_own_and_freed_once_its_step_is_done(tiny, monkeypatch):
    engine = FrameEngine(tiny, max_batch=16)
    held: dict[int, weakref.ref] = {}
    real_wait = engine.wait

    def wait(request):
        got, done = real_wait(request)
        for frame_idx, f in zip(request.frames, got):
            tensor = f.vision_embeds.last_hidden_state
            assert tensor.untyped_storage().nbytes() == tensor.numel() * tensor.element_size(), \
                "a frame's features are a view of the whole batch"
            held[frame_idx] = weakref.ref(tensor)
        return got, done

    monkeypatch.setattr(engine, "wait", wait)
    alive_after_step = {}

    def after_step(frame_idx: int) -> None:
        gc.collect()
        alive_after_step[frame_idx] = [i for i, ref in held.items() if i < frame_idx and ref() is not None]

    stream = engine.open_feed(VideoTracker(tiny, ["dog"], H, W), 8, after_step)
    frames = np.random.default_rng(8).integers(0, 255, (16, H, W, 3), dtype=np.uint8)
    for i in range(16):
        stream.push(i, frames[i])
    stream.finish()
    assert sorted(alive_after_step) == list(range(16)) and sorted(held) == list(range(16))
    assert all(not alive for alive in alive_after_step.values()), alive_after_step


@pytest.fixture(scope="module")
def dog16(tmp_path_factory) -> Path:
    return _clip(tmp_path_factory.mktemp("dog16"), media.DOG, 16, "dog16.mp4")


@pytest.fixture(scope="module")
def clean_chunked(tiny, dog16, tmp_path_factory) -> bytes:
    return _run_video(tiny, dog16, tmp_path_factory.mktemp("clean-chunked"), 8, FrameEngine(tiny))


@pytest.mark.parametrize("place", PLACES)
def test_out_of_memory_anywhere_in_a_chunk_runs_it_again_alone(tiny, dog16, clean_chunked, tmp_path, monkeypatch,
                                                                place):
    """Two chunks of 8 frames (B = 8); the fault lands in the second: at model frame 10 (its step,
    or the pixels of the 11th frame pushed), in its restore (the first) or in its flush (the last)."""
    mark = tmp_path / "oom-injected"
    monkeypatch.setattr(*patch(place, 10, mark))
    failed: list = []
    got = _run_video(tiny, dog16, tmp_path / "run", 8, FrameEngine(tiny), out_of_memory=failed)
    assert mark.exists() and mark.read_text().startswith(place), "the out-of-memory error was injected"
    assert failed == [(1, failed[0][1])] and "injected by a test" in failed[0][1], failed
    assert_found_objects(json.loads(clean_chunked))
    assert got == clean_chunked, first_difference(got, clean_chunked)


def test_max_batch_reaches_the_engine(tiny):
    engine = engine_for(tiny, max_batch=4)
    try:
        assert engine is engine_for(tiny) and engine.max_batch == 4
        engine.calls.clear()
        stream = engine.open_feed(VideoTracker(tiny, ["dog"], H, W), 8)
        frames = np.random.default_rng(9).integers(0, 255, (8, H, W, 3), dtype=np.uint8)
        for i in range(8):
            stream.push(i, frames[i])
        stream.finish()
        assert [frames for call in engine.calls for _, frames in call] == [(0, 1, 2, 3), (4, 5, 6, 7)]
    finally:
        engine_for(tiny, max_batch=16)
