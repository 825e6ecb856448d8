"""The tiny model must produce objects, or every downstream test would pass on empty outputs."""

from __future__ import annotations

import numpy as np

from workers.media.decode import open_reader
from workers.media.probe import probe
from workers.model.tracker import VideoTracker, check_prompts


def test_tiny_model_tracks_a_few_objects_with_varying_masks(tiny, dog24):
    info = probe(dog24)
    tracker = VideoTracker(tiny, check_prompts(tiny.tokenizer, ["dog"]), info.height, info.width)
    results = []
    for frame in open_reader(info):
        results += tracker.push(frame.index, frame.rgb)
    results += tracker.flush()
    assert [r.frame_idx for r in results] == list(range(24))

    frames_with = {}
    areas: dict[int, list[int]] = {}
    for r in results:
        assert r.masks.shape[1:] == (info.height, info.width)
        for obj_id, mask in zip(r.object_ids, r.masks):
            assert mask.any(), "empty masks are dropped"
            frames_with[obj_id] = frames_with.get(obj_id, 0) + 1
            areas.setdefault(obj_id, []).append(int(mask.sum()))
    long_tracks = [i for i, n in frames_with.items() if n >= 20]
    assert 2 <= len(long_tracks) <= 4, frames_with
    for obj_id in long_tracks:
        assert len(set(areas[obj_id])) > 5, f"object {obj_id} mask does not change from frame to frame"
    # different objects really are different regions
    last = results[-1]
    assert not np.any(last.masks[0] & last.masks[1])
