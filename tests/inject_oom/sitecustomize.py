"""Loaded (through PYTHONPATH) by one test's GPU worker only: its first tracker step on model frame
``SAM3V_TEST_OOM_FRAME`` raises CUDA's out-of-memory error, once per ``SAM3V_TEST_OOM_MARK`` file,
as a real card would when several streams share it. Nothing here is imported by sam3v itself."""

import os

if os.environ.get("SAM3V_TEST_OOM_FRAME"):
    from pathlib import Path

    import torch

    import workers.tracker as tracker

    _frame = int(os.environ["SAM3V_TEST_OOM_FRAME"])
    _mark = Path(os.environ["SAM3V_TEST_OOM_MARK"])
    _step = tracker.VideoTracker.step

    def step(self, frame_idx, pixels, features=None):
        if frame_idx == _frame and not _mark.exists():
            _mark.write_text(str(os.getpid()))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by a test)")
        return _step(self, frame_idx, pixels, features)

    tracker.VideoTracker.step = step
