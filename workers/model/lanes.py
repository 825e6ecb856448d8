"""CUDA streams for the engine ("lanes", so as not to be confused with a chunk's stream of frames).

Every thread that shares CUDA's default stream waits for every other thread's queued work at each
host sync (transformers' ``.tolist()``, postprocess's copy of the masks). A lane is one CUDA stream:
one per video stream and one for the backbone, so a host sync inside a lane waits only for that
lane's work. Work handed from one lane to another goes with a ``Mark`` (a CUDA event recorded
after it was queued) that the receiving lane waits for on the device, and its tensors are
recorded on the receiving lane, so the caching allocator does not reuse their memory while the
receiver may still read it.

On a CPU a lane has no CUDA stream and each method does nothing, but the engine calls them all the
same, so the code paths are the ones a GPU runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Mark:
    """A point in one lane's queued work (None on a CPU: everything already ran)."""

    event: torch.cuda.Event | None = None


class Lane:
    def __init__(self, device: torch.device):
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        """Queue the block's device work on this lane."""
        if self.stream is None:
            yield
            return
        with torch.cuda.stream(self.stream):
            yield

    @contextlib.contextmanager
    def joined(self) -> Iterator[None]:
        """``active``, ordered after the work the caller's stream queued before (a state restored
        onto the device) and with the caller's later work after the block's (a state saved)."""
        if self.stream is None:
            yield
            return
        caller = torch.cuda.current_stream(self.stream.device)
        self.stream.wait_stream(caller)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            caller.wait_stream(self.stream)

    def mark(self) -> Mark:
        """The work queued on this lane so far."""
        if self.stream is None:
            return Mark()
        event = torch.cuda.Event()
        event.record(self.stream)
        return Mark(event)

    def receive(self, mark: Mark, tensors: Iterable[torch.Tensor]) -> None:
        """Use ``tensors``, made on another lane up to ``mark``, on this one: wait for them on the
        device (not the host) and keep their memory from reuse until this lane's work on them is done."""
        if self.stream is None:
            return
        if mark.event is not None:
            self.stream.wait_event(mark.event)
        for tensor in tensors:
            if tensor.device.type == "cuda":
                tensor.record_stream(self.stream)
