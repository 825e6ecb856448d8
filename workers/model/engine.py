"""The GPU engine: one model in a process, K feeds of frames around it.

A feed (``Feed``: what ``--streams`` and ``SAM3V_STREAMS`` count) is one running chunk (one video);
its CUDA stream is its lane (``workers.model.lanes``), another thing altogether. Its frames go through the model in groups of B, on a
grid of the video's own frame numbers (group g holds frames [gB, gB + B)), so a group never depends
on where a chunk starts when chunk sizes are multiples of B (``pipeline.core.planning``)::

    stream 1 ─ group g+1 asked ─┐                     ┌─ steps of group g (stream 1's tracker)
    stream 2 ─ group h+1 asked ─┼─> one backbone call ┼─ steps of group h (stream 2's tracker)
    stream K ─ group k+1 asked ─┘  (up to max_batch)  └─ ...

- A stream asks for group g+1's features as soon as its frames are decoded and tracks group g
  meanwhile, so the groups that other streams asked for are waiting when one stream needs its
  next group. Whichever stream needs features that are not ready makes one batched call of the
  detector's vision backbone (and the tracker's neck) for every waiting group, oldest first, up to
  ``max_batch`` frames and one group per stream (no extra thread, no waiting for company).
- Tracker steps of different streams run at once: each step gets a model object of its own with
  the video's thresholds and the frame's features (``frame_features.step_model``), the weights
  shared. Each stream queues its device work on its own CUDA stream and the backbone on another
  (``workers.model.lanes``), so a stream's host syncs (postprocess, transformers' ``.tolist()``) wait
  only for its own work; features and pixels cross between them with events.
- A frame's features are its own tensors (not views of the batch) and are dropped once its step
  is done.
- Out of GPU memory in a batched backbone call: the engine frees the cache and computes each
  stream's group alone, then in halves, before giving up on the one that cannot fit. Out of memory
  anywhere else in a chunk (pixels, restoring its state, a step, the flush at the video's end)
  leaves that stream's tracker unusable: ``FrameEngine.guarded`` turns it into ``OutOfMemory`` for
  the chunk, which runs again from its input state with this process's engine to itself
  (``alone``; other processes may still share the card).

Streams are driven by their own threads (the worker's threads pool, one per chunk), or by the
caller's thread (``sam3v segment``, the embedded mode: K = 1).
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import TypeVar

import numpy as np
import torch

from pipeline.core.errors import Sam3vError
from workers.media.frame_objects import FrameObjects
from workers.model import frame_features
from workers.model.frame_features import FrameFeatures
from workers.model.lanes import Lane, Mark
from workers.model.loading import LoadedModel
from workers.model.tracker import VideoTracker

DEFAULT_MAX_BATCH = 16
RECORDED_CALLS = 1000

T = TypeVar("T")


class OutOfMemory(Sam3vError):
    """A chunk ran out of GPU memory; ``alone`` says whether it had the engine to itself."""

    def __init__(self, message: str, alone: bool):
        super().__init__(message)
        self.alone = alone


def _free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


class _Request:
    """One stream's group (or a piece of it, up to max_batch frames) waiting for its features."""

    def __init__(self, owner: Feed, frames: list[int], pixels: torch.Tensor, ready: Mark):
        self.owner, self.frames, self.pixels, self.ready = owner, frames, pixels, ready
        # (features, the backbone lane's mark after them); the list is emptied as frames are stepped.
        self.future: Future[tuple[list[FrameFeatures | None], Mark]] = Future()


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
    """One per process and model; thread-safe. ``open_feed`` for each chunk that runs."""

    def __init__(self, loaded: LoadedModel, max_batch: int = DEFAULT_MAX_BATCH):
        self.loaded = loaded
        self.max_batch = _checked(max_batch)
        self.lane = Lane(loaded.device)  # the backbone's CUDA stream
        self._pending: list[_Request] = []
        self._pending_lock = threading.Lock()
        self._backbone = threading.Lock()  # one batched backbone call at a time
        self._names = itertools.count()
        self.exclusive = _Exclusive()
        # For tests and benchmarks (the last RECORDED_CALLS): frames per backbone call, and each
        # call's make-up as ((stream name, model frame numbers), ...) per group in it.
        self.batches: list[int] = []
        self.calls: deque[tuple[tuple[str, tuple[int, ...]], ...]] = deque(maxlen=RECORDED_CALLS)

    def open_feed(self, tracker: VideoTracker, frame_batch: int = 1,
                    after_step: Callable[[int], None] | None = None, alone: bool = False,
                    name: str | None = None) -> Feed:
        """A stream for one chunk. ``alone``: the caller holds ``exclusive.alone()`` for the chunk."""
        return Feed(self, tracker, frame_batch, after_step, alone, f"{name or 'stream'}-{next(self._names)}")

    def guarded(self, work: Callable[[], T], alone: bool) -> T:
        """``work()``, its out-of-memory errors (the device's, or the backbone's ``OutOfMemory``)
        turned into the chunk's ``OutOfMemory``. The cache is freed after the ``except`` block:
        inside it the error's traceback still holds the failed call's frames and their tensors."""
        try:
            return work()
        except (torch.OutOfMemoryError, OutOfMemory) as err:
            message = str(err)
        _free_memory(self.loaded.device)
        raise OutOfMemory(f"out of GPU memory: {message}", alone=alone)

    # --- the backbone ---------------------------------------------------------------------------
    def ask(self, owner: Feed, frames: list[int], pixels: torch.Tensor, ready: Mark) -> list[_Request]:
        """Queue a group's features (pixels (N, 3, S, S) made on the owner's lane up to ``ready``),
        in pieces of at most max_batch frames; ``wait`` for each."""
        size = self.max_batch
        requests = [_Request(owner, frames[i:i + size], pixels[i:i + size], ready) for i in range(0, len(frames), size)]
        with self._pending_lock:
            self._pending += requests
        return requests

    def wait(self, request: _Request) -> tuple[list[FrameFeatures | None], Mark]:
        """The request's features; when they are not ready, computes them with whatever else waits."""
        while not request.future.done():
            with self._backbone:
                if request.future.done():
                    break
                self._run(self._take(request))
        return request.future.result()

    def withdraw(self, owner: Feed) -> None:
        """Forget what ``owner`` asked for and will not wait for (its chunk stopped)."""
        with self._pending_lock:
            self._pending = [r for r in self._pending if r.owner is not owner]

    def features(self, pixels: torch.Tensor) -> list[FrameFeatures]:
        """Features of frames (N, 3, S, S) outside any stream, batched with whatever streams wait."""
        features = []
        for request in self.ask(None, list(range(pixels.shape[0])), pixels, Mark()):  # type: ignore[arg-type]
            features += self.wait(request)[0]
        return features

    def _take(self, needed: _Request) -> list[_Request]:
        """``needed`` and other waiting groups, oldest first, at most one per stream (a stream's
        groups are computed one per call, whoever computes them) and up to max_batch frames in all.
        A stream that runs alone takes only its own."""
        with self._pending_lock:
            if needed not in self._pending:
                raise RuntimeError("internal: features waited for were withdrawn")
            chosen, owners, frames = {id(needed)}, {_key(needed)}, len(needed.frames)
            if needed.owner is None or not needed.owner.alone:
                for request in self._pending:
                    n = len(request.frames)
                    if _key(request) in owners or frames + n > self.max_batch:
                        continue
                    chosen.add(id(request))
                    owners.add(_key(request))
                    frames += n
            taken = [r for r in self._pending if id(r) in chosen]
            self._pending = [r for r in self._pending if id(r) not in chosen]
            return taken

    def _run(self, taken: list[_Request]) -> None:
        try:
            self._compute(taken)
        except BaseException as err:  # never leave a stream waiting on a future nobody will set
            for request in taken:
                if not request.future.done():
                    request.future.set_exception(err)

    def _compute(self, taken: list[_Request]) -> None:
        message = None
        try:
            out, done = self._backbone_call(taken)
        except torch.OutOfMemoryError as err:
            message = str(err)
        if message is not None:  # retried here, after the except block: the failed call's tensors are gone
            _free_memory(self.loaded.device)
            if len(taken) > 1:  # each stream's group alone; one that cannot fit fails alone
                for request in taken:
                    self._run([request])
                return
            request = taken[0]
            n = len(request.frames)
            if n == 1:
                raise OutOfMemory(f"out of GPU memory computing one frame's features: {message}", alone=False)
            first, _ = self._in_halves(request, 0, n // 2)
            rest, done = self._in_halves(request, n // 2, n)
            request.future.set_result((first + rest, done))
            return
        at = 0
        for request in taken:
            n = len(request.frames)
            request.future.set_result((out[at:at + n], done))
            at += n

    def _in_halves(self, request: _Request, start: int, stop: int) -> tuple[list[FrameFeatures], Mark]:
        """Frames [start, stop) of ``request``: in one call, or else in halves, down to one frame."""
        piece = _Request(request.owner, request.frames[start:stop], request.pixels[start:stop], request.ready)
        message = None
        try:
            return self._backbone_call([piece])
        except torch.OutOfMemoryError as err:
            message = str(err)
        _free_memory(self.loaded.device)
        if stop - start == 1:
            raise OutOfMemory(f"out of GPU memory computing one frame's features: {message}", alone=False)
        middle = (start + stop) // 2
        first, _ = self._in_halves(request, start, middle)
        rest, done = self._in_halves(request, middle, stop)
        return first + rest, done

    def _backbone_call(self, taken: list[_Request]) -> tuple[list[FrameFeatures], Mark]:
        with self.lane.active(), torch.inference_mode():
            for request in taken:
                self.lane.receive(request.ready, [request.pixels])
            pixels = torch.cat([r.pixels for r in taken]) if len(taken) > 1 else taken[0].pixels
            with _autocast(self.loaded):
                out = frame_features.compute(self.loaded.model, pixels)
            done = self.lane.mark()
        self.batches = self.batches[-(RECORDED_CALLS - 1):] + [pixels.shape[0]]
        self.calls.append(tuple((r.owner.name if r.owner is not None else "", tuple(r.frames)) for r in taken))
        return out, done


def _key(request: _Request) -> int:
    """Whose group it is (each request outside a stream is its own)."""
    return id(request.owner) if request.owner is not None else id(request)


def _checked(max_batch: int) -> int:
    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    return max_batch


def _autocast(loaded: LoadedModel):
    dtype = loaded.autocast_dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=loaded.device.type, dtype=dtype)


_Frame = tuple[int, torch.Tensor, bool]  # model frame number, pixels, tracked (False: context)


class Feed:
    """One chunk's frames through the engine, in order (model frame numbers): ``push`` each decoded
    frame, ``drain`` when the decoding ends, ``flush`` at the video's end (``finish``: both). Each
    returns the frames whose objects are final, oldest first; ``close`` when the chunk stops early.
    (What ``--streams`` counts; its CUDA stream is its ``lane``.)

    A group is always the whole of its B frames, wherever the chunk starts or stops: a chunk pushes
    the group's frames on either side of its own range as ``context`` (their features are computed
    with the group, they are not tracked), so a chunked run computes exactly the batches of an
    unchunked one.
    """

    def __init__(self, engine: FrameEngine, tracker: VideoTracker, frame_batch: int,
                 after_step: Callable[[int], None] | None, alone: bool = False, name: str = "stream"):
        if frame_batch < 1:
            raise ValueError(f"frame_batch must be at least 1, got {frame_batch}")
        self.engine, self.tracker, self.frame_batch, self.after_step = engine, tracker, frame_batch, after_step
        self.alone, self.name = alone, name
        self.lane = Lane(engine.loaded.device)
        self._group: list[_Frame] = []
        self._asked: deque[tuple[list[_Frame], list[_Request]]] = deque()  # asked for, not yet tracked

    def group_bounds(self, first: int, stop: int) -> tuple[int, int]:
        """The frames whose features a run of model frames [first, stop) needs: whole groups."""
        b = self.frame_batch
        return first // b * b, -(-stop // b) * b

    def push(self, frame_idx: int, rgb: np.ndarray, context: bool = False) -> list[FrameObjects]:
        return self._entered(lambda: self._push(frame_idx, rgb, context))

    def drain(self) -> list[FrameObjects]:
        """Run the frames pushed so far (a group cut short: the decoding ended) and every group asked for."""
        return self._entered(lambda: self._close_group(last=True))

    def flush(self) -> list[FrameObjects]:
        """The end of the video: the hotstart buffer's frames."""
        return self._entered(self.tracker.flush)

    def finish(self) -> list[FrameObjects]:
        """``drain``, then ``flush``."""
        return self.drain() + self.flush()

    def close(self) -> None:
        """The chunk stops here: what it asked for is no longer wanted."""
        self.engine.withdraw(self)
        self._asked.clear()
        self._group = []

    def _entered(self, work: Callable[[], list[FrameObjects]]) -> list[FrameObjects]:
        """``work`` on this stream's lane, sharing the engine unless alone; a stream that raised is
        done (its tracker may be half-updated): what it asked for is withdrawn."""
        def run() -> list[FrameObjects]:
            with contextlib.nullcontext() if self.alone else self.engine.exclusive.shared(), self.lane.joined():
                return work()

        try:
            return self.engine.guarded(run, self.alone)
        except BaseException:
            self.close()
            raise

    def _push(self, frame_idx: int, rgb: np.ndarray, context: bool) -> list[FrameObjects]:
        self._group.append((frame_idx, self.tracker.pixels(rgb), not context))
        if (frame_idx + 1) % self.frame_batch:
            return []
        return self._close_group(last=False)

    def _close_group(self, last: bool) -> list[FrameObjects]:
        """Ask for the features of the group just pushed, then track the groups before it (all of
        them when ``last``): a stream tracks group g while group g+1's features are asked for."""
        group, self._group = self._group, []
        if any(tracked for _, _, tracked in group):
            if self.frame_batch == 1:
                return self._track(group, [])  # features inside the step, exactly as transformers' loop
            pixels = torch.stack([p for _, p, _ in group])
            self._asked.append((group, self.engine.ask(self, [i for i, _, _ in group], pixels, self.lane.mark())))
            del pixels
        finished: list[FrameObjects] = []
        while len(self._asked) > (0 if last else 1):
            finished += self._track(*self._asked.popleft())
        return finished

    def _track(self, group: list[_Frame], requests: list[_Request]) -> list[FrameObjects]:
        features: list[FrameFeatures | None] = []
        for request in requests:
            got, done = self.engine.wait(request)
            self.lane.receive(done, [t for f in got if f is not None for t in f.tensors()])
            features += got
            got.clear()  # the request no longer holds them: each is freed once its step is done
        del requests
        finished: list[FrameObjects] = []
        for i in range(len(group)):
            frame_idx, pixels, tracked = group[i]
            feats = features[i] if features else None
            group[i] = (frame_idx, None, tracked)  # type: ignore[assignment]
            if features:
                features[i] = None
            if not tracked:
                continue
            closed = self.tracker.step(frame_idx, pixels, feats)
            del pixels, feats
            if self.after_step:
                self.after_step(frame_idx)
            finished += self.tracker.final_objects(closed)
        return finished


_engines: dict[int, tuple[LoadedModel, FrameEngine]] = {}
_engines_lock = threading.Lock()


def engine_for(loaded: LoadedModel, max_batch: int | None = None) -> FrameEngine:
    """This process's engine around ``loaded`` (made on first use); ``max_batch`` (SAM3V_MAX_BATCH)
    applies from its next backbone call on (None: as it is, DEFAULT_MAX_BATCH when made)."""
    with _engines_lock:
        kept = _engines.get(id(loaded))
        if kept is None or kept[0] is not loaded:
            kept = (loaded, FrameEngine(loaded, max_batch or DEFAULT_MAX_BATCH))
            _engines[id(loaded)] = kept
        elif max_batch is not None:
            kept[1].max_batch = _checked(max_batch)
        return kept[1]
