"""Loaded (through PYTHONPATH) by one test's CPU worker only: lands a fault in a video's finalize,
once per ``SAM3V_TEST_FINALIZE_DIR`` (its ``frozen`` file, holding the pid, marks that it landed).
``SAM3V_TEST_FINALIZE_AT``:

- ``join``: freezes while the outputs are being made (the first ``concat_parts``), before anything is
  published, until the test creates ``release`` in the folder;
- ``publish``: freezes after the outputs are published, before the success is recorded, until ``release``;
- ``kill``: SIGKILLs the process right after the success is recorded, before ``work/`` is removed.

Nothing here is imported by sam3v itself."""

import os

if os.environ.get("SAM3V_TEST_FINALIZE_AT"):
    import signal
    import time
    from pathlib import Path

    import workers.chunks.finalize as finalize
    import workers.jobs.outcomes as video_state

    _at = os.environ["SAM3V_TEST_FINALIZE_AT"]
    _dir = Path(os.environ["SAM3V_TEST_FINALIZE_DIR"])

    def _land() -> bool:
        """True the first time only: the fault lands once."""
        mark = _dir / "frozen"
        if mark.exists():
            return False
        mark.write_text(str(os.getpid()))
        return True

    def _freeze() -> None:
        if _land():
            while not (_dir / "release").exists():
                time.sleep(0.05)

    _concat, _finish = finalize.concat_parts, video_state.finish_video

    def concat_parts(parts, out):
        if _at == "join":
            _freeze()
        return _concat(parts, out)

    def finish_video(ctx, job_id, video_id, attempt, **fields):
        succeeded = fields.get("status") == "succeeded"
        if succeeded and _at == "publish":
            _freeze()
        _finish(ctx, job_id, video_id, attempt, **fields)
        if succeeded and _at == "kill" and _land():
            os.kill(os.getpid(), signal.SIGKILL)

    finalize.concat_parts = concat_parts
    video_state.finish_video = finish_video  # before workers.jobs.tasks imports it by name
