"""The GPU engine: one model in a process, K streams of frames around it.

A stream is one running chunk (one video). Its frames go through the model in groups of B, on a
grid of the video's own frame numbers (group g holds frames [gB, gB + B)), so a group never depends
on where a chunk starts when chunk sizes are multiples of B (``pipeline.core.planning``)::

    stream 1 ─ group of B frames ─┐                    ┌─ step f, f+1, ... (stream 1's tracker)
    stream 2 ─ group of B frames ─┼─> one backbone call ┼─ step g, g+1, ... (stream 2's tracker)
    stream K ─ group of B frames ─┘   (up to max_batch) └─ ...

- The detector's vision backbone (and the tracker's neck) for every group waiting at that moment,
  from all streams, runs as one batched call of up to ``max_batch`` frames: whichever stream finds
  no call running makes one for everybody waiting (no extra thread, no waiting for company).
- Tracker steps run one at a time (one model: transformers keeps a video's detection thresholds on
  the model object), each with its frame's features computed ahead; the stream's postprocess (on
  the device, one host sync) runs outside that lock, beside the next stream's step and backbone.
- Out of GPU memory in a batched backbone call: the engine frees the cache and computes each
  stream's group alone, then in halves, before giving up on the one that cannot fit. Out of memory
  inside a tracker step leaves that stream's session half-updated: ``OutOfMemory`` is raised to the
  stream's chunk, which runs again from its input state with the engine to itself (``alone``).

Streams are driven by their own threads (the worker's threads pool, one per chunk), or by the
caller's thread (``sam3v segment``, the embedded mode: K = 1).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future

import numpy as np
import torch

from pipeline.core.errors import Sam3vError
from workers import frame_features
from workers.frame_features import FrameFeatures
from workers.model import LoadedModel
from workers.tracker import FrameObjects, VideoTracker

DEFAULT_MAX_BATCH = 16


class OutOfMemory(Sam3vError):
    """A chunk ran out of GPU memory; ``alone`` says whether it had the engine to itself."""

    def __init__(self, message: str, alone: bool):
        super().__init__(message)
        self.alone = alone


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError)


def _free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _Request:
    def __init__(self, pixels: torch.Tensor):
        self.pixels = pixels
        self.future: Future[list[FrameFeatures]] = Future()


class _Exclusive:
    """Streams share the engine; a chunk that must run alone waits for them to leave and keeps
    new ones out until it is done (a reader-writer lock that favours the writer)."""

    def __init__(self):
        self._cond = threading.Condition()
        self._shared = 0
        self._alone = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not self._alone and not self._waiting)
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def alone(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not self._alone and not self._shared)
            self._waiting -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


class FrameEngine:
    """One per process and model; thread-safe. ``open_stream`` for each chunk that runs."""

    def __init__(self, loaded: LoadedModel, max_batch: int = DEFAULT_MAX_BATCH):
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.loaded = loaded
        self.max_batch = max_batch
        self._pending: list[_Request] = []
        self._pending_lock = threading.Lock()
        self._backbone = threading.Lock()  # one batched backbone call at a time
        self._model_step = threading.Lock()  # one tracker step at a time
        self.exclusive = _Exclusive()
        self.batches: list[int] = []  # frames per backbone call, for tests and benchmarks (last 1000)

    def open_stream(self, tracker: VideoTracker, frame_batch: int = 1,
                    after_step: Callable[[int], None] | None = None, alone: bool = False) -> Stream:
        """A stream for one chunk. ``alone``: the caller holds ``exclusive.alone()`` for the chunk."""
        return Stream(self, tracker, frame_batch, after_step, alone)

    # --- the backbone ---------------------------------------------------------------------------
    def features(self, pixels: torch.Tensor) -> list[FrameFeatures]:
        """Features of a group of frames (N, 3, S, S), batched with whatever other streams wait."""
        request = _Request(pixels)
        with self._pending_lock:
            self._pending.append(request)
        while not request.future.done():
            with self._backbone:
                if request.future.done():
                    break
                self._run_pending()
        return request.future.result()

    def _take(self) -> list[_Request]:
        """Waiting groups, oldest first, up to max_batch frames (always at least one group)."""
        with self._pending_lock:
            taken, frames = [], 0
            while self._pending and (not taken or frames + self._pending[0].pixels.shape[0] <= self.max_batch):
                request = self._pending.pop(0)
                taken.append(request)
                frames += request.pixels.shape[0]
            return taken

    def _run_pending(self) -> None:
        taken = self._take()
        if not taken:
            return
        try:
            self._compute_together(taken)
        except BaseException as err:  # never leave a stream waiting on a future nobody will set
            for request in taken:
                if not request.future.done():
                    request.future.set_exception(err)

    def _compute_together(self, taken: list[_Request]) -> None:
        pixels = torch.cat([r.pixels for r in taken]) if len(taken) > 1 else taken[0].pixels
        try:
            out = self._backbone_call(pixels)
        except torch.OutOfMemoryError:
            _free_memory(self.loaded.device)
            if len(taken) > 1:
                for request in taken:  # each stream's group alone; one that cannot fit fails alone
                    try:
                        self._compute_together([request])
                    except OutOfMemory as err:
                        request.future.set_exception(err)
                return
            taken[0].future.set_result(self._compute_in_halves(taken[0].pixels))
            return
        at = 0
        for request in taken:
            n = request.pixels.shape[0]
            request.future.set_result(out[at:at + n])
            at += n

    def _compute_in_halves(self, pixels: torch.Tensor) -> list[FrameFeatures]:
        if pixels.shape[0] == 1:
            try:
                return self._backbone_call(pixels)
            except torch.OutOfMemoryError as err:
                _free_memory(self.loaded.device)
                raise OutOfMemory(f"out of GPU memory computing one frame's features: {err}", alone=False) from err
        half = pixels.shape[0] // 2
        return self._compute_in_halves(pixels[:half]) + self._compute_in_halves(pixels[half:])

    @torch.inference_mode()
    def _backbone_call(self, pixels: torch.Tensor) -> list[FrameFeatures]:
        with _autocast(self.loaded):
            out = frame_features.compute(self.loaded.model, pixels)
        self.batches = self.batches[-999:] + [pixels.shape[0]]
        return out

    # --- tracker steps --------------------------------------------------------------------------
    def step(self, tracker: VideoTracker, frame_idx: int, pixels: torch.Tensor, features: FrameFeatures | None):
        with self._model_step:
            return tracker.step(frame_idx, pixels, features)


def _autocast(loaded: LoadedModel):
    dtype = loaded.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=loaded.device.type, dtype=dtype)


class Stream:
    """One chunk's frames through the engine, in order (model frame numbers): ``push`` each decoded
    frame, ``drain`` when the decoding ends, ``finish`` at the video's end. Each returns the frames
    whose objects are final, oldest first.

    A group is always the whole of its B frames, wherever the chunk starts or stops: a chunk pushes
    the group's frames on either side of its own range as ``context`` (their features are computed
    with the group, they are not tracked), so a chunked run computes exactly the batches of an
    unchunked one.
    """

    def __init__(self, engine: FrameEngine, tracker: VideoTracker, frame_batch: int,
                 after_step: Callable[[int], None] | None, alone: bool = False):
        if frame_batch < 1:
            raise ValueError(f"frame_batch must be at least 1, got {frame_batch}")
        self.engine, self.tracker, self.frame_batch, self.after_step = engine, tracker, frame_batch, after_step
        self.alone = alone
        self._group: list[tuple[int, torch.Tensor, bool]] = []

    def group_bounds(self, first: int, stop: int) -> tuple[int, int]:
        """The frames whose features a run of model frames [first, stop) needs: whole groups."""
        b = self.frame_batch
        return first // b * b, -(-stop // b) * b

    def push(self, frame_idx: int, rgb: np.ndarray, context: bool = False) -> list[FrameObjects]:
        self._group.append((frame_idx, self.tracker.pixels(rgb), not context))
        if (frame_idx + 1) % self.frame_batch:
            return []
        return self.drain()

    def drain(self) -> list[FrameObjects]:
        """Run the frames pushed so far (a group cut short: the decoding ended)."""
        group, self._group = self._group, []
        if not any(tracked for _, _, tracked in group):
            return []
        try:
            with contextlib.nullcontext() if self.alone else self.engine.exclusive.shared():
                return self._run(group)
        except torch.OutOfMemoryError as err:
            _free_memory(self.engine.loaded.device)
            raise OutOfMemory(f"out of GPU memory in a tracker step: {err}", alone=self.alone) from err
        except OutOfMemory as err:
            raise OutOfMemory(str(err), alone=self.alone) from err

    def finish(self) -> list[FrameObjects]:
        """The end of the video: the last group, then the hotstart buffer."""
        finished = self.drain()
        return finished + self.tracker.flush()

    def _run(self, group: list[tuple[int, torch.Tensor, bool]]) -> list[FrameObjects]:
        # B = 1 computes the features inside the step, exactly as transformers' own loop does.
        if self.frame_batch > 1:
            features = self.engine.features(torch.stack([p for _, p, _ in group]))
        else:
            features = [None] * len(group)
        finished: list[FrameObjects] = []
        for (frame_idx, pixels, tracked), feats in zip(group, features):
            if not tracked:
                continue
            closed = self.engine.step(self.tracker, frame_idx, pixels, feats)
            if self.after_step:
                self.after_step(frame_idx)
            finished += self.tracker.finalise(closed)
        return finished


_engines: dict[int, tuple[LoadedModel, FrameEngine]] = {}
_engines_lock = threading.Lock()


def engine_for(loaded: LoadedModel, max_batch: int = DEFAULT_MAX_BATCH) -> FrameEngine:
    """This process's engine around ``loaded`` (made on first use)."""
    with _engines_lock:
        kept = _engines.get(id(loaded))
        if kept is None or kept[0] is not loaded:
            kept = (loaded, FrameEngine(loaded, max_batch))
            _engines[id(loaded)] = kept
        return kept[1]
