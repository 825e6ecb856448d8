"""Whose fault is a failure: the video's or this worker's?

The video's (not a video, an unreachable or refused source, a bad prompt) fails that video. The
worker's (its model missing or not loadable, a CUDA error, a full disk, no permission to write its
storage) would fail every video it took: such a worker drained a nightly queue into failures faster
than every healthy worker together. So a worker fault fails no video: the task goes back to the
queue, not counted against SAM3V_MAX_REDELIVERIES, and the worker takes itself out of service
(``workers.jobs.service``).
"""

from __future__ import annotations

import errno

from pipeline.core.errors import ModelUnavailableError, WorkerFault

# A full or read-only disk fails whatever video comes next; a missing file or a bad path does not.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS}
_PERMISSION_ERRNOS = {errno.EACCES, errno.EPERM}
_STORAGE_DENIED = {"AccessDenied", "Forbidden", "403", "InvalidAccessKeyId", "SignatureDoesNotMatch",
                   "ExpiredToken", "InvalidToken"}
# What torch says when the GPU, its driver or a kernel is broken (not "out of memory": a chunk that
# needs more memory than the card has is the video's, handled by workers.model.engine.OutOfMemory).
_CUDA_SIGNS = ("CUDA error", "CUDA driver", "CUDNN_STATUS", "CUBLAS_STATUS", "cuDNN error",
               "no CUDA GPUs are available", "Found no NVIDIA driver", "device-side assert",
               "CUDA-capable device")


def _chain(err: BaseException):
    """``err`` and the errors it was raised from (a worker's disk error often arrives wrapped)."""
    seen = 0
    while err is not None and seen < 8:
        yield err
        err, seen = err.__cause__ or err.__context__, seen + 1


def _storage_denied(err: BaseException) -> bool:
    """A storage call of this worker refused for its credentials (sources that refuse the worker
    arrive as InputError naming the input: the video's)."""
    response = getattr(err, "response", None)
    if not isinstance(response, dict):
        return False
    return str(response.get("Error", {}).get("Code", "")) in _STORAGE_DENIED


def worker_fault(err: BaseException, model: str) -> str | None:
    """Why ``err`` is this worker's fault rather than the video's (one line), or None. ``model``:
    the worker's SAM3V_MODEL, named when the model is at fault (``worker`` has no --model)."""
    if isinstance(err, WorkerFault):
        return str(err)
    if _storage_denied(err):
        return f"storage refused this worker's credentials: {err}"
    if isinstance(err, PermissionError) or (isinstance(err, OSError) and err.errno in _PERMISSION_ERRNOS):
        return f"no permission on this worker's disk or storage: {err}"
    for cause in _chain(err):
        if isinstance(cause, ModelUnavailableError):
            return f"SAM3V_MODEL={model}: {cause}"
        if isinstance(cause, OSError) and cause.errno in _DISK_ERRNOS:
            return f"this worker's disk is full or read-only: {cause}"
        text = str(cause)
        if "No space left on device" in text:
            return f"this worker's disk is full: {text.strip().splitlines()[-1]}"
        if any(sign in text for sign in _CUDA_SIGNS) and "out of memory" not in text:
            return f"CUDA error: {text.strip().splitlines()[0]}"
    return None
