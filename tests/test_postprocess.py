"""The postprocess on the device (one host sync a frame) gives exactly what transformers' processor
did through the frozen per-frame loop of 038fd06 (``benchmarks/frozen_038fd06``): the same object
ids, scores, prompts and masks, over random frames built to hit its corner cases: empty masks,
several prompts, objects with no tracker score yet (0.0), equal scores (ties), one object alone."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from benchmarks.frozen_038fd06 import tracker as frozen
from workers.model import tracker


def random_frame(rng: np.random.Generator):
    n = int(rng.integers(1, 7))
    ids = [int(i) for i in rng.choice(20, size=n, replace=False)]
    # Offsets from none to all-negative: some masks cover much, some nothing (empty after upsampling).
    masks = {i: torch.randn(1, 16, 16) * 3 - float(rng.choice([0.0, 0.0, 2.0, 50.0])) for i in ids}
    tracker_scores = {i: float(rng.choice([0.0, 0.5, 0.5, 0.9, rng.random()])) for i in ids if rng.random() < 0.8}
    session = types.SimpleNamespace(hotstart_removed_obj_ids={ids[0]} if rng.random() < 0.1 else set(),
                                    obj_id_to_prompt_id={i: int(rng.integers(0, 3)) for i in ids},
                                    prompts={0: "dog", 1: "ball", 2: "cup"})
    out = types.SimpleNamespace(obj_id_to_mask=masks, suppressed_obj_ids={ids[-1]} if rng.random() < 0.1 else set(),
                                obj_id_to_tracker_score=tracker_scores,
                                obj_id_to_score={i: float(rng.random() * 1.2 - 0.1) for i in ids}, frame_idx=7)
    return session, out


@pytest.mark.parametrize("seed", range(5))
def test_device_postprocess_equals_the_processors(seed):
    rng = np.random.default_rng(seed)
    compared = dropped = 0
    for _ in range(300):
        session, out = random_frame(rng)
        want = frozen.postprocess(session, out, 40, 50)
        got = tracker.postprocess(session, out, 40, 50)
        assert got.object_ids == want.object_ids
        assert got.scores == want.scores and got.prompts == want.prompts
        assert got.masks.dtype == want.masks.dtype and np.array_equal(got.masks, want.masks)
        compared += len(want.object_ids)
        dropped += len(out.obj_id_to_mask) - len(want.object_ids)
    assert compared > 300 and dropped > 100  # both kept and dropped objects were exercised
