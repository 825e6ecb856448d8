"""Loaded (through PYTHONPATH) by the GPU workers of fault tests that count frames through the model
(``tests.fault_env.Worker.start(..., count_steps=True)``): after each tracker step, the process
appends ``<pid> <model frame>`` to the file ``SAM3V_TEST_STEP_LOG``. A test reads it to tell which
frames went through the model, how often, and in which process. Nothing here is imported by sam3v."""

import os

if os.environ.get("SAM3V_TEST_STEP_LOG"):
    import workers.model.tracker as tracker

    _log = os.environ["SAM3V_TEST_STEP_LOG"]
    _step = tracker.VideoTracker.step

    def step(self, frame_idx, pixels, features=None):
        closed = _step(self, frame_idx, pixels, features)
        with open(_log, "a") as f:  # one short line a write: whole lines even across processes
            f.write(f"{os.getpid()} {frame_idx}\n")
        return closed

    tracker.VideoTracker.step = step
