"""Loaded (through PYTHONPATH) by one test's GPU worker only: with SAM3V_TEST_TRACE set, appends a
JSON line to that file for each backbone call (the streams whose groups it held, and when) and
each tracker step (which tracker, when), so the test can see streams share calls and overlap in
time. Nothing here is imported by sam3v itself."""

import os

if os.environ.get("SAM3V_TEST_TRACE"):
    import json
    import threading
    import time

    from workers.model.engine import FrameEngine
    from workers.model.tracker import VideoTracker

    _path, _lock = os.environ["SAM3V_TEST_TRACE"], threading.Lock()
    _call, _step = FrameEngine._backbone_call, VideoTracker.step

    def _write(record: dict) -> None:
        with _lock, open(_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def backbone_call(self, taken):
        t0 = time.monotonic()
        out = _call(self, taken)
        _write({"call": [r.owner.name if r.owner else "" for r in taken], "t0": t0, "t1": time.monotonic()})
        return out

    def step(self, frame_idx, pixels, features=None):
        t0 = time.monotonic()
        out = _step(self, frame_idx, pixels, features)
        _write({"step": id(self), "frame": frame_idx, "t0": t0, "t1": time.monotonic()})
        return out

    FrameEngine._backbone_call = backbone_call
    VideoTracker.step = step
