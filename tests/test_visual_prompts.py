"""Visual prompts (#22, the model half): objects given as points, a box or a mask, tracked by SAM 3's
interactive tracker on the one loaded model, both ways, written with the text-found objects.

Tiny random model on real frames of 01_dog.mp4, CPU. Its masks mean nothing, so the assertions are
about the mechanism: where an object is present, which frames it covers, that its id and
description are kept, that a run equals transformers' own interactive tracker fed the same inputs,
and that an input reaches the model (a negative point changes the mask where it is put).
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from pipeline.core.errors import InputError
from pipeline.core.specs import VideoOptions
from pipeline.core.storage import LocalStorage
from pipeline.core.visual_prompts import Exemplar, ObjectPrompt
from tests import media
from tests.test_api import api, inputs  # noqa: F401  (module fixtures: API, Redis, a worker)
from tests.test_pipeline import env, redis_server, s3  # noqa: F401  (module fixtures)
from workers.chunks import backward_pass as backward_module
from workers.chunks import video_steps
from workers.chunks.backward_pass import _features, backward_pass
from workers.chunks.video_steps import segment_video
from workers.media import rle
from workers.media.decode import open_reader
from workers.media.probe import probe
from workers.model import visual_objects as visual_objects_module
from workers.model.tracker import VideoTracker
from workers.model.visual_objects import exemplar_boxes, visual_objects
from workers.model.visual_tracker import VisualSession

DOG = media.DOG
W, H = 1280, 720  # 01_dog.mp4, displayed
BOX = [400.0, 200.0, 300.0, 300.0]  # x, y, w, h


def _frames(doc: dict, obj_id: int) -> list[int]:
    return [f["frame"] for f in doc["frames"] if any(o["id"] == obj_id for o in f["objects"])]


def _entry(doc: dict, frame: int, obj_id: int) -> dict:
    frame_entry = next(f for f in doc["frames"] if f["frame"] == frame)
    return next(o for o in frame_entry["objects"] if o["id"] == obj_id)


def _run(tiny, out: Path, objects: list[ObjectPrompt], prompts: list[str], **opts) -> dict:
    segment_video(DOG, tiny, VideoOptions(outputs=["rle"], **opts), prompts, LocalStorage(out), objects=objects)
    return json.loads((out / "masks.json").read_bytes())


@pytest.fixture(scope="module")
def both_ways(tiny, tmp_path_factory):
    """One run of 42 frames (about a minute on 2 loaded cores): a box on frame 20 (id 5), a point on
    frame 1 (id assigned: 0), a box on frame 40 (id 2)."""
    objects = [ObjectPrompt(id=5, frame=20, box=BOX),
               ObjectPrompt(frame=1, points=[[640.0, 360.0]]),
               ObjectPrompt(id=2, frame=40, box=[100.0, 100.0, 200.0, 150.0])]
    return _run(tiny, tmp_path_factory.mktemp("both"), objects, [], max_frames=42)


def test_box_on_frame_0_is_tracked_to_the_last_frame(tiny, tmp_path):
    doc = _run(tiny, tmp_path, [ObjectPrompt(frame=0, box=BOX)], [], max_frames=10)
    assert doc["prompts"] == []
    assert doc["objects"] == [{"id": 0, "prompt": {"frame": 0, "box": BOX}, "first_frame": 0, "last_frame": 9}]
    mask = rle.decode(_entry(doc, 0, 0)["segmentation"])
    x, y, w, h = (int(v) for v in BOX)
    assert mask[y:y + h, x:x + w].any(), "the frame-0 mask does not reach into its box"
    assert _frames(doc, 0) == list(range(10))


def test_box_on_frame_20_is_tracked_backwards_and_forwards(both_ways):
    assert _frames(both_ways, 5) == list(range(42)), "frames 0-19 come from the backward pass, 21-41 forwards"
    described = {o["id"]: o for o in both_ways["objects"]}
    assert described[5]["prompt"] == {"frame": 20, "box": BOX}
    assert described[0]["prompt"] == {"frame": 1, "points": [[640.0, 360.0]], "labels": [1]}


def test_objects_prompted_on_frames_1_and_40_are_both_present_at_the_end(both_ways):
    last = both_ways["frames"][-1]
    assert last["frame"] == 41
    assert {0, 2, 5} <= {o["id"] for o in last["objects"]}
    assert _frames(both_ways, 0) == list(range(42)) and _frames(both_ways, 2) == list(range(42))


def test_text_objects_share_the_id_space_after_the_visual_ones(tiny, tmp_path):
    doc = _run(tiny, tmp_path, [ObjectPrompt(id=5, frame=3, box=BOX)], ["dog"], max_frames=6)
    text = [o for o in doc["objects"] if o["prompt"] == "dog"]
    assert text, "the tiny model finds some 'dog' objects"
    assert min(o["id"] for o in text) > 5
    assert doc["prompts"] == ["dog"]
    assert _frames(doc, 5) == list(range(6))
    assert any(len(f["objects"]) > 1 for f in doc["frames"]), "visual and text objects on one frame"


def test_a_mask_from_an_earlier_run_continues_that_object(tiny, both_ways, tmp_path):
    seg = _entry(both_ways, 41, 5)["segmentation"]
    doc = _run(tiny, tmp_path, [ObjectPrompt(id=5, frame=41, mask=seg)], [], start_frame=41, max_frames=4)
    assert _frames(doc, 5) == [41, 42, 43, 44]
    given, got = rle.decode(seg), rle.decode(_entry(doc, 41, 5)["segmentation"])
    iou = (given & got).sum() / (given | got).sum()
    # The mask is the object on its frame (SAM's mask-as-output, exactly as transformers: see the
    # reference tests below), through the tiny model's 64 x 64 low-resolution masks: same region.
    assert iou > 0.7, iou
    assert doc["objects"][0]["prompt"] == {"frame": 41, "mask": {"size": [H, W], "bbox": rle.bbox(seg)}}


# --- against transformers' own interactive tracker ------------------------------------------------

@pytest.fixture(scope="module")
def dog_features(tiny):
    info = probe(DOG, "dog")
    with open_reader(info, 0, 8) as reader:
        return info, [_features(tiny, frame.rgb) for frame in reader]


def _reference(tiny, features, prompt_frame: int, reverse: bool, **given):
    """What transformers does with one object: ``Sam3TrackerVideoProcessor.add_inputs_to_inference_session``
    and ``Sam3TrackerVideoModel.forward`` from the prompt's frame on, in one direction."""
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import (
        Sam3TrackerVideoInferenceSession,
    )
    from transformers.models.sam3_tracker_video.processing_sam3_tracker_video import (
        Sam3TrackerVideoProcessor,
    )

    processor = object.__new__(Sam3TrackerVideoProcessor)  # only its input handling is used: no image processor
    processor.target_size, processor.point_pad_value = tiny.image_size, -10
    session = Sam3TrackerVideoInferenceSession(video_height=H, video_width=W, dtype=torch.float32)
    session.processed_frames = dict.fromkeys(range(len(features)))
    processor.add_inputs_to_inference_session(session, frame_idx=prompt_frame, obj_ids=3, **given)
    order = range(prompt_frame, -1, -1) if reverse else range(prompt_frame, len(features))
    outs = {}
    with torch.inference_mode():
        for t in order:
            f = features[t]
            session.cache.cache_vision_features(t, {"vision_feats": f.tracker_feats, "vision_pos_embeds": f.tracker_pos})
            out = tiny.model.tracker_model(inference_session=session, frame_idx=t, reverse=reverse)
            outs[t] = (out.pred_masks, out.object_score_logits)
    return outs


def _ours(tiny, features, prompt: ObjectPrompt, reverse: bool):
    session = VisualSession(tiny, visual_objects([prompt], 0, H, W), H, W, reverse=reverse,
                            frames=range(len(features)))
    order = range(prompt.frame, -1, -1) if reverse else range(prompt.frame, len(features))
    return session, {t: session.step(t, features[t]) for t in order}


@pytest.mark.parametrize("reverse", [False, True], ids=["forwards", "backwards"])
def test_one_object_equals_transformers_interactive_tracker(tiny, dog_features, reverse):
    _, features = dog_features
    prompt = ObjectPrompt(id=3, frame=4, box=BOX, points=[[500.0, 300.0], [650.0, 420.0]], labels=[1, 0])
    session, ours = _ours(tiny, features, prompt, reverse)
    x, y, w, h = BOX
    ref = _reference(tiny, features, 4, reverse, input_points=[[[[500.0, 300.0], [650.0, 420.0]]]],
                     input_labels=[[[1, 0]]], input_boxes=[[[x, y, x + w, y + h]]])
    assert sorted(ours) == sorted(ref)
    for t, (masks, scores) in ref.items():
        expected = session._frame_objects(t, [3], masks, scores)
        assert ours[t].object_ids == expected.object_ids == [3], t
        assert np.array_equal(ours[t].masks, expected.masks), f"frame {t}"
        assert ours[t].scores == expected.scores


def test_a_mask_prompt_equals_transformers_interactive_tracker(tiny, dog_features):
    _, features = dog_features
    mask = np.zeros((H, W), dtype=bool)
    mask[150:500, 300:800] = True
    seg = rle.encode(mask)
    session, ours = _ours(tiny, features, ObjectPrompt(id=3, frame=2, mask=seg), reverse=False)
    ref = _reference(tiny, features, 2, False, input_masks=mask)
    for t, (masks, scores) in ref.items():
        assert np.array_equal(ours[t].masks, session._frame_objects(t, [3], masks, scores).masks), f"frame {t}"


def test_a_negative_point_reaches_the_model_where_it_is_put(tiny, dog_features):
    """With random weights a negative point need not remove anything; what holds for the real
    mechanism is that it is a label-0 click at its pixel: the prompt frame's mask changes with it,
    and it changes at the point."""
    _, features = dog_features
    box_only = ObjectPrompt(id=3, frame=0, box=BOX)
    with_negative = ObjectPrompt(id=3, frame=0, box=BOX, points=[[550.0, 350.0]], labels=[0])
    with_positive = ObjectPrompt(id=3, frame=0, box=BOX, points=[[550.0, 350.0]], labels=[1])
    masks = {}
    for name, prompt in (("box", box_only), ("neg", with_negative), ("pos", with_positive)):
        session = VisualSession(tiny, visual_objects([prompt], 0, H, W), H, W, frames=range(1))
        masks[name] = session.step(0, features[0]).masks[0]
    assert not np.array_equal(masks["box"], masks["neg"]), "the negative point changed nothing"
    assert not np.array_equal(masks["neg"], masks["pos"]), "the point's label does not reach the model"
    window = (slice(300, 400), slice(500, 600))  # around the point
    assert (masks["neg"][window] != masks["pos"][window]).any()


def test_a_later_prompt_of_the_same_object_conditions_it_again(tiny, dog_features):
    """As SAM's clicks on another frame: the frame becomes a conditioning frame of the object (its
    mask is the prompt's own, memory aside), and the frames after it remember both prompts."""
    _, features = dog_features
    first = ObjectPrompt(id=3, frame=0, box=BOX)
    later = ObjectPrompt(id=3, frame=4, points=[[300.0, 500.0]])
    both = VisualSession(tiny, visual_objects([first, later], 0, H, W), H, W, frames=range(8))
    only_first = VisualSession(tiny, visual_objects([first], 0, H, W), H, W, frames=range(8))
    only_later = VisualSession(tiny, visual_objects([later], 0, H, W), H, W, frames=range(8))
    out = {name: {t: s.step(t, features[t]).masks for t in range(s_from, 6)}
           for name, s, s_from in (("both", both, 0), ("first", only_first, 0), ("later", only_later, 4))}
    assert np.array_equal(out["both"][4], out["later"][4])
    assert not np.array_equal(out["both"][4], out["first"][4])
    assert not np.array_equal(out["both"][5], out["first"][5])
    assert not np.array_equal(out["both"][5], out["later"][5])
    assert all(np.array_equal(out["both"][t], out["first"][t]) for t in range(4))


# --- the backward pass ----------------------------------------------------------------------------

def test_backward_pass_is_the_same_in_any_decode_segments(tiny, dog_features, monkeypatch):
    """Frames are decoded forwards a segment at a time, the last segment first: the cut never shows."""
    info, _ = dog_features
    objects = visual_objects([ObjectPrompt(id=1, frame=6, box=BOX), ObjectPrompt(id=2, frame=3, points=[[600.0, 300.0]])],
                             0, H, W)
    whole = backward_pass(tiny, info, objects, 0)
    monkeypatch.setattr(backward_module, "SEGMENT_FRAMES", 3)
    cut = backward_pass(tiny, info, objects, 0)
    assert sorted(whole) == list(range(6))
    assert [whole[t].object_ids for t in range(6)] == [[1, 2], [1, 2], [1, 2], [1], [1], [1]]
    for t in whole:
        assert np.array_equal(whole[t].masks, cut[t].masks), t


def test_pruning_the_backward_session_is_exact(tiny, dog_features, monkeypatch):
    """Tracked backwards over 12 frames from a prompt on frame 11 (the memory window is 6 frames), the
    pruned pass gives the unpruned pass's masks bit for bit, and holds fewer frames' memories."""
    from workers.model.state_pruning import prune_backward

    info, _ = dog_features
    objects = visual_objects([ObjectPrompt(id=1, frame=11, box=BOX)], 0, H, W)
    runs, held = {}, {}
    for pruned in (True, False):
        counts = held.setdefault(pruned, [])

        def after_step(session, frame_idx, windows, pruned=pruned, counts=counts):
            freed = prune_backward(session, frame_idx, windows) if pruned else 0
            counts.append(sum("maskmem_features" in e for o in session.output_dict_per_obj.values()
                              for e in o["non_cond_frame_outputs"].values()))
            return freed

        monkeypatch.setattr(backward_module, "prune_backward", after_step)
        runs[pruned] = backward_pass(tiny, info, objects, 0)
    assert max(held[True]) <= 6 < max(held[False]), held
    assert sorted(runs[True]) == sorted(runs[False]) == list(range(11))
    for t in runs[False]:
        assert np.array_equal(runs[True][t].masks, runs[False][t].masks), t


# --- refusals, before any compute -----------------------------------------------------------------

def test_chunked_equals_unchunked_with_boundaries_on_both_sides_of_a_prompt(tiny, tmp_path, monkeypatch):
    """Chunks of 8 frames cut at 8 and 16 around the box on frame 10: the backward pass runs as two
    chunks of its own (frames 10-8, then 7-0, the session carried from the first to the second through
    the state codec), the forward visual session and the frames still in the hotstart window cross
    both boundaries; masks.json is byte-identical to the one-chunk run."""
    objects = [ObjectPrompt(id=1, frame=10, box=BOX), ObjectPrompt(id=4, frame=3, points=[[600.0, 300.0]])]
    docs, backward_chunks, progress = {}, {}, {}
    real = video_steps.run_backward_chunk

    def recorded(*args, **kwargs):
        chunk = args[4]
        backward_chunks[current].append((chunk.index, chunk.start, chunk.stop))
        return real(*args, **kwargs)

    monkeypatch.setattr(video_steps, "run_backward_chunk", recorded)
    for chunk_frames in (None, 8):
        current = chunk_frames
        backward_chunks[current], seen = [], progress.setdefault(chunk_frames, [])
        out = tmp_path / str(chunk_frames)
        result = segment_video(DOG, tiny, VideoOptions(outputs=["rle"], max_frames=20, chunk_frames=chunk_frames),
                               [], LocalStorage(out), objects=objects, progress=lambda n, total: seen.append((n, total)))
        assert result.num_chunks == (1 if chunk_frames is None else 3)
        docs[chunk_frames] = (out / "masks.json").read_bytes()
    assert backward_chunks == {None: [(0, 0, 11)], 8: [(1, 8, 11), (0, 0, 8)]}
    assert docs[8] == docs[None]
    doc = json.loads(docs[None])
    assert _frames(doc, 1) == list(range(20)) and _frames(doc, 4) == list(range(20))
    # Progress counts the backward pass's 11 frames, then the forward run's 20, in order, to the end.
    for seen in progress.values():
        assert {total for _, total in seen} == {31} and [n for n, _ in seen] == list(range(1, 32)), seen


def test_chunked_backward_pass_from_a_start_frame_equals_unchunked(tiny, tmp_path):
    """From start_frame 4 (the model's frame 0), chunks of 4: a box on source frame 9 is tracked back
    to frame 4 by backward chunks of frames 9-8 and 7-4; masks.json equals the one-chunk run's."""
    docs = {}
    for chunk_frames in (None, 4):
        out = tmp_path / str(chunk_frames)
        segment_video(DOG, tiny, VideoOptions(outputs=["rle"], start_frame=4, max_frames=8, chunk_frames=chunk_frames),
                      [], LocalStorage(out), objects=[ObjectPrompt(id=3, frame=9, box=BOX)])
        docs[chunk_frames] = (out / "masks.json").read_bytes()
    assert docs[4] == docs[None]
    assert _frames(json.loads(docs[None]), 3) == list(range(4, 12))


@pytest.mark.parametrize("prompt, message", [
    (ObjectPrompt(frame=30, box=BOX), r"objects\[0\].frame: 30 is past the last frame processed \(9\)"),
    (ObjectPrompt(frame=2, mask=rle.encode(np.ones((10, 10), dtype=bool))), r"objects\[0\].mask: size \[10, 10\]"),
])
def test_a_prompt_the_video_cannot_hold_is_refused(tiny, tmp_path, prompt, message):
    with pytest.raises(InputError, match=message):
        segment_video(DOG, tiny, VideoOptions(outputs=["rle"], max_frames=10), [], LocalStorage(tmp_path),
                      objects=[prompt])


def test_text_prompts_may_be_left_out_only_with_visual_prompts(tiny, tmp_path):
    with pytest.raises(InputError, match="at least one text prompt"):
        segment_video(DOG, tiny, VideoOptions(outputs=["rle"], max_frames=2), [], LocalStorage(tmp_path))


# --- exemplars --------------------------------------------------------------------------------------

def _detector_calls(tiny, monkeypatch, exemplars: list[Exemplar], frames: int = 4,
                    run_geometry: bool = True) -> list[tuple]:
    """(input_boxes, input_boxes_labels, pred_logits) of each detector call of a text run of
    ``frames`` frames; ``run_geometry`` False: the boxes are recorded, the detector runs without them
    (for a machine without torchvision, which SAM 3's geometry encoder needs)."""
    detector_class = type(tiny.model.detector_model)
    original = detector_class.forward
    calls = []

    def spy(self, *args, input_boxes=None, input_boxes_labels=None, **kwargs):
        given = (input_boxes, input_boxes_labels) if run_geometry else (None, None)
        out = original(self, *args, input_boxes=given[0], input_boxes_labels=given[1], **kwargs)
        calls.append((input_boxes, input_boxes_labels, out.pred_logits.clone()))
        return out

    monkeypatch.setattr(detector_class, "forward", spy)
    tracker = VideoTracker(tiny, ["dog"], H, W, exemplars=exemplar_boxes(exemplars, 0, H, W, frames))
    with open_reader(probe(DOG, "dog"), 0, frames) as reader:
        for frame in reader:
            tracker.push(frame.index, frame.rgb)
    monkeypatch.setattr(detector_class, "forward", original)
    return calls


EXEMPLARS = [Exemplar(frame=2, box=BOX), Exemplar(frame=2, box=[0.0, 0.0, 128.0, 72.0], positive=False)]


def test_exemplars_reach_the_detector_on_their_frame_only(tiny, monkeypatch):
    monkeypatch.setattr(visual_objects_module, "geometry_encoder_available", lambda: True)
    calls = _detector_calls(tiny, monkeypatch, EXEMPLARS, run_geometry=False)
    assert [boxes is not None for boxes, _, _ in calls] == [False, False, True, False]
    boxes, labels, _ = calls[2]
    x, y, w, h = BOX
    expected = [[(x + w / 2) / W, (y + h / 2) / H, w / W, h / H], [64 / W, 36 / H, 128 / W, 72 / H]]
    assert torch.allclose(boxes, torch.tensor([expected]))
    assert labels.tolist() == [[1, 0]]


def test_exemplars_change_the_detections_of_their_frame(tiny, monkeypatch):
    """Runs where torchvision is installed (SAM 3's geometry encoder needs it): skipped, not passed, here."""
    pytest.importorskip("torchvision")
    calls = _detector_calls(tiny, monkeypatch, EXEMPLARS)
    plain = _detector_calls(tiny, monkeypatch, [])
    assert not torch.equal(calls[2][2], plain[2][2])
    assert torch.equal(calls[1][2], plain[1][2])


def test_exemplars_without_torchvision_are_refused_clearly(monkeypatch):
    monkeypatch.setattr(visual_objects_module, "geometry_encoder_available", lambda: False)
    with pytest.raises(InputError, match="exemplars: .*torchvision is not installed"):
        exemplar_boxes(EXEMPLARS, 0, H, W, 10)
    assert exemplar_boxes([], 0, H, W, 10) == {}


def test_exemplars_without_a_text_prompt_are_refused(tiny, tmp_path):
    with pytest.raises(InputError, match="exemplars: .* give a text prompt too"):
        segment_video(DOG, tiny, VideoOptions(outputs=["rle"], max_frames=4), [], LocalStorage(tmp_path),
                      exemplars=[Exemplar(frame=1, box=BOX)])


def test_pruning_the_visual_session_is_exact(tiny):
    """The chunk runner prunes after every frame; the forward visual session's history goes too
    (its memory window is 6 frames: 10 frames prune some) and the masks stay bit-identical."""
    from workers.model.state_pruning import prune

    info = probe(DOG, "dog")
    objects = visual_objects([ObjectPrompt(id=1, frame=0, box=BOX), ObjectPrompt(id=2, frame=2, points=[[300.0, 200.0]])],
                             0, H, W, 10)
    runs = {}
    for pruned in (False, True):
        tracker = VideoTracker(tiny, [], H, W, visual=objects, num_frames=10)
        found = []
        with open_reader(info, 0, 10) as reader:
            for frame in reader:
                found += tracker.push(frame.index, frame.rgb)
                if pruned:
                    prune(tracker, frame.index)
        runs[pruned] = found + tracker.flush()
        memories = [sum("maskmem_features" in out for out in o["non_cond_frame_outputs"].values())
                    for o in tracker.visual.session.output_dict_per_obj.values()]
        assert (max(memories) <= 6) == pruned, memories  # 9 frames tracked after object 1's prompt
    assert [f.object_ids for f in runs[True]] == [f.object_ids for f in runs[False]]
    for a, b in zip(runs[True], runs[False]):
        assert np.array_equal(a.masks, b.masks), a.frame_idx


def test_sam3v_segment_with_only_a_box_runs_end_to_end(tiny_model_dir, dog24, tmp_path):
    """The CLI's spec reaches the model: a box on frame 3 alone, no --prompt, both directions."""
    from tests.test_cli import run

    done = run("segment", dog24, "--out", tmp_path, "--model", tiny_model_dir, "--device", "cpu",
               "--box", "3:400,200,300,300@9", "--max-frames", "6", "--outputs", "rle")
    assert done.returncode == 0, done.stderr
    doc = json.loads((tmp_path / "masks.json").read_bytes())
    assert doc["objects"] == [{"id": 9, "prompt": {"frame": 3, "box": BOX}, "first_frame": 0, "last_frame": 5}]


def test_api_request_with_only_a_box_succeeds_through_the_queue(api, inputs):  # noqa: F811
    """Through the API, Redis, a real Celery worker and the result URLs: a box on frame 4 of an
    8-frame clip, no text; its object covers frames 0-3 (backwards) and 5-7 (forwards)."""
    from tests.test_api import enqueue, wait

    gen = enqueue(api, {"input_video": f"{inputs['base']}/clip.mp4", "objects": [{"id": 7, "frame": 4, "box": BOX}]})
    doc = wait(api, gen)
    assert doc["status"] == "succeeded", doc
    masks = httpx.get(doc["result_urls"]["masks"]).json()
    assert masks["objects"] == [{"id": 7, "prompt": {"frame": 4, "box": BOX}, "first_frame": 0, "last_frame": 7}]
    assert httpx.get(doc["result_url"]).content[4:8] == b"ftyp"


def test_a_visual_object_is_labelled_by_its_id():
    from workers.media.labels import label_text

    assert label_text(7, {"frame": 3, "box": BOX}) == "7"
    assert label_text(7, [{"frame": 3, "box": BOX}, {"frame": 9, "points": [[1.0, 2.0]], "labels": [1]}]) == "7"
    assert label_text(2, "dog") == "2 dog"


def test_the_backward_pass_is_planned_on_the_forward_grid_last_chunk_first():
    from pipeline.core.planning import Chunk, plan_backward, plan_chunks

    chunks = plan_chunks(20, 8, start_frame=5)  # frames 5-12, 13-20, 21-24
    assert plan_backward(chunks, 11, 5) == [Chunk(1, 13, 16, False), Chunk(0, 5, 13, True)]
    assert plan_backward(chunks, 20, 5) == [Chunk(2, 21, 25, False), Chunk(1, 13, 21, False), Chunk(0, 5, 13, True)]
    assert plan_backward(chunks, 0, 5) == []
    assert plan_backward(plan_chunks(20, None), 20) == [Chunk(0, 0, 20, True)]
    with pytest.raises(ValueError, match="after the last planned frame"):
        plan_backward(chunks, 21, 5)


def test_backward_masks_travel_exactly_and_refuse_another_request(tmp_path):
    from workers.chunks.backward_pass import BackwardMasks, masks_document
    from workers.media.frame_objects import FrameObjects
    from workers.model.state_codec import StateError

    objects = visual_objects([ObjectPrompt(id=1, frame=3, box=BOX), ObjectPrompt(id=2, frame=5, box=BOX)], 0, H, W)
    rng = np.random.default_rng(0)
    found = {t: FrameObjects(t, [1, 2], [0.25, 0.7310585786300049], [None, None], rng.random((2, H, W)) > 0.5)
             for t in (0, 2)}
    masks = BackwardMasks(masks_document(found), "m.json", objects, H, W)
    for t, want in found.items():
        got = masks.take(t)
        assert got.object_ids == want.object_ids and got.scores == want.scores
        assert np.array_equal(got.masks, want.masks)
        assert got.prompts == [o.description for o in objects]
    assert masks.take(0) is None and masks.take(1) is None  # each frame is taken once
    with pytest.raises(StateError, match=r"m.json: frame 0 holds objects \[1, 2\], not the video's \[1\]"):
        BackwardMasks(masks_document(found), "m.json", objects[:1], H, W)
    with pytest.raises(StateError, match="m.json: frame 0's masks are not 360x640"):
        BackwardMasks(masks_document(found), "m.json", objects, 360, 640)
    with pytest.raises(StateError, match="m.json: damaged backward-pass masks"):
        BackwardMasks(b'{"format": "sam3v.backward-masks", "version": 1}', "m.json", objects, H, W)


def test_a_backward_chunk_refuses_a_state_that_is_not_a_backward_pass(tiny, tmp_path):
    from workers.model.state_codec import StateError, load_backward, save_state

    objects = visual_objects([ObjectPrompt(id=1, frame=3, box=BOX)], 0, H, W)
    save_state(VideoTracker(tiny, [], H, W, visual=objects, num_frames=4), tmp_path)
    with pytest.raises(StateError, match="not a backward pass's state"):
        load_backward(tmp_path, tiny, objects)
