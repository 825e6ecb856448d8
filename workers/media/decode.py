"""Sequential decode of a probed video to RGB frames in displayed orientation.

Two backends behind one interface, PyAV first and decord second (``SAM3V_DECODER`` turns the order
round; each takes over when the other cannot open or decode a file):
- PyAV (first): decodes on demand, at about the ffmpeg CLI's speed. It does not rotate, so we do.
- decord (second): read with ``next()``, never ``get_batch`` on a range (several times slower);
  it applies the container's rotation itself. It is not first because decord 0.6 decodes ahead of
  a slow reader without bound (hundreds of MB), and the model is always a slow reader; its bundled
  FFmpeg 4.1 also cannot open AV1, fails on MPEG-TS ("Unable to handle EOF" at the first frame) and
  on truncated files (its open reads every packet and gives up on the first read error).

``open_reader`` decides the backend before returning by decoding the first frame eagerly, so
``reader.backend`` is final and an undecodable file fails there with an ``InputError``.
``DecodeThread`` runs any frame iterator in a background thread behind a bounded queue.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Literal

import numpy as np

from pipeline.core.errors import InputError
from workers.media.probe import VideoInfo

if TYPE_CHECKING:
    import av
    import av.container

log = logging.getLogger(__name__)

Backend = Literal["decord", "pyav"]


@dataclass
class Frame:
    index: int  # 0-based index in the source video
    pts: float  # presentation time in seconds, source timestamps (VFR preserved)
    rgb: np.ndarray  # (H, W, 3) uint8, C-contiguous, displayed orientation
    # The decoder's own planar yuv420p picture, (H * 3 // 2, W) uint8 (I420), where it can be had
    # without conversion (see ``yuv_capable``): the compositor draws on it, sparing the encoder
    # an rgb24 -> yuv420p conversion and the pipe half its bytes.
    yuv: np.ndarray | None = None


def yuv_capable(info: VideoInfo) -> bool:
    """yuv420p frames can go to the encoder as decoded: no rotation, even size, 8-bit 4:2:0."""
    return (info.pix_fmt == "yuv420p" and info.rotation == 0
            and info.width % 2 == 0 and info.height % 2 == 0)


def _turn(rgb: np.ndarray, clockwise_quarters: int) -> np.ndarray:
    # np.rot90 with positive k turns counter-clockwise, hence the minus.
    if clockwise_quarters % 4:
        rgb = np.rot90(rgb, k=-clockwise_quarters)
    return np.ascontiguousarray(rgb)


class DamagedSource(InputError):
    """A strict reader met a damaged packet (``FrameReader.strict``)."""


class FrameReader:
    """Frames [start, start + count) of one video, in order. Iterate once; close() or ``with``.

    ``warning`` is None when all went well, else why fewer frames than promised may have come
    out (stream ended before the header's frame count, damaged packets, start past the end).
    Callers compare the frames they got with ``VideoInfo.frames_expected``.
    """

    backend: Backend
    warning: str | None = None

    def __init__(self, info: VideoInfo, start: int, stop: int | None, strict: bool = False) -> None:
        self.info = info
        self.path = info.path
        self._start = start
        self._stop = stop  # exclusive; None: to the end
        # A damaged packet is an error, not skipped: frames after a skipped packet are numbered one
        # lower, so a chunk whose frames another chunk also reads (by seeking to a timestamp) would
        # disagree with it on which frame is which, and its video could not be joined.
        self.strict = strict

    def __iter__(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> FrameReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _warn(self, message: str) -> None:
        if self.warning is None:  # keep the first cause: later ones are usually its echo
            self.warning = message
            log.warning("%s: %s", self.path, message)

    def _ended_at(self, next_index: int) -> None:
        """The stream ran out before ``stop``: say so if the header promised more frames."""
        expected = self.info.frames_expected
        if expected is not None and next_index < expected:
            self._warn(f"stream ended after {next_index} of the {expected} frames its header "
                       "promises (truncated?)")


def open_reader(info: VideoInfo, start: int = 0, count: int | None = None,
                backend: Backend | None = None, first: Backend = "pyav", strict: bool = False) -> FrameReader:
    """Open ``info.path`` at frame ``start`` for ``count`` frames (None: to the end).

    ``backend`` forces one backend (tests, benchmarks). By default PyAV reads, and decord takes
    over when PyAV cannot open the file or decode its first frame; ``first="decord"``
    (SAM3V_DECODER) turns the order round. PyAV comes first because decord 0.6 decodes ahead of a slow reader without
    bound (measured: +535 MB for a 3,000-frame 320x180 file, +874 MB for 300 frames of 720p,
    however few frames were asked for), and the model is always a slow reader; PyAV decodes on
    demand and reads at about the ffmpeg CLI's speed (README, performance).
    Raises ``InputError`` when no backend can decode the video's first frame. Starting past
    the frames that decode (a chunk planned from a header that over-promised) is not an error:
    the reader is empty and ``warning`` says why.
    """
    if start < 0 or (count is not None and count < 0):
        raise ValueError(f"start and count must be >= 0, got start={start} count={count}")
    stop = None if count is None else start + count
    if backend is not None:
        return _READERS[backend](info, start, stop, strict)
    if first not in _READERS:
        raise InputError(f"SAM3V_DECODER={first!r}: expected pyav or decord")
    second = "decord" if first == "pyav" else "pyav"
    try:
        return _READERS[first](info, start, stop, strict)
    except DamagedSource:
        raise  # the other backend would number the frames past the damage its own way
    except Exception as err:  # decord raises DECORDError, RuntimeError, and more
        log.info("%s cannot read %s (%s); trying %s", first, info.path, _one_line(err), second)
        failure = err
    try:
        return _READERS[second](info, start, stop, strict)
    except InputError:
        raise
    except Exception as err:
        # Neither decodes it: the first backend's error is the one to show, if it is for the user.
        if isinstance(failure, InputError):
            raise failure from err
        raise InputError(f"{info.path}: no video frame could be decoded ({_one_line(failure)})") from err


def iter_frames(info: VideoInfo, start: int = 0, count: int | None = None) -> Iterator[Frame]:
    """Frames [start, start + count) of the video (count None: to the end), in order."""
    with open_reader(info, start, count) as reader:
        yield from reader


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return text[:200] or type(err).__name__


class _DecordReader(FrameReader):
    backend: Backend = "decord"

    def __init__(self, info: VideoInfo, start: int, stop: int | None, strict: bool = False) -> None:
        from decord import VideoReader, cpu  # heavy import, only on the data plane

        super().__init__(info, start, stop, strict)
        self._vr = VideoReader(info.path, ctx=cpu(0), num_threads=0)
        self._total = len(self._vr)
        self._end = self._total if stop is None else min(stop, self._total)
        self._index = start
        # decord's timestamps are float32 seconds since the stream's start_time, sorted by pts.
        # float32 still resolves ~0.25 ms at one hour: plenty to order and mux frames.
        self._ts = self._vr.get_frame_timestamp(range(self._total))[:, 0] if self._total else None
        self._first: np.ndarray | None = None
        self._turns = 0
        if start >= self._end:
            if start >= self._total and start != stop:
                self._warn(f"start {start} is past the last frame ({self._total - 1})")
            return
        if start > 0:
            self._vr.seek_accurate(start)
        # Decode one frame now: a file decord opens but cannot decode (MPEG-TS here) must fall
        # back to PyAV inside open_reader, before anyone iterates.
        first = self._vr.next().asnumpy()
        self._turns = self._missing_turns(info, first.shape)
        if _turned_shape(first.shape, self._turns) != (info.height, info.width):
            raise RuntimeError(f"decord frame shape {first.shape} does not match the probe's "
                               f"{info.height}x{info.width} (displayed)")
        self._first = first

    @staticmethod
    def _missing_turns(info: VideoInfo, shape: tuple[int, ...]) -> int:
        """Quarter turns decord left undone (normally none).

        decord 0.6 rotates frames itself, from the same display matrix / rotate tag ffprobe
        reads (VideoReader::GetRotation + transpose filters), so applying info.rotation again
        would over-rotate. Turn only when the frame shape shows decord did not; a 180 turn does
        not show in the shape, and decord applies it by the same rule.
        """
        if info.rotation in (90, 270) and info.coded_width != info.coded_height and (
                shape[0], shape[1]) == (info.coded_height, info.coded_width):
            return info.rotation // 90
        return 0

    def __iter__(self) -> Iterator[Frame]:
        from decord import DECORDError

        try:
            if self._first is not None:
                first, self._first = self._first, None
                yield self._frame(first)
            while self._index < self._end:
                try:
                    rgb = self._vr.next().asnumpy()
                except StopIteration:
                    break
                except DECORDError as err:
                    # Damaged or truncated data mid-way: keep what decoded, stop cleanly.
                    self._warn(f"decord stopped at frame {self._index}: {_one_line(err)}")
                    return
                yield self._frame(rgb)
            if self._stop is None or self._index < self._stop:
                self._ended_at(self._index)
        finally:
            self.close()

    def _frame(self, rgb: np.ndarray) -> Frame:
        assert self._ts is not None
        pts = self.info.start_time + float(self._ts[self._index])
        frame = Frame(self._index, pts, _turn(rgb, self._turns))
        self._index += 1
        return frame

    def close(self) -> None:
        self._vr = None  # decord frees its handle when the VideoReader is collected


def _turned_shape(shape: tuple[int, ...], turns: int) -> tuple[int, int]:
    return (shape[1], shape[0]) if turns % 2 else (shape[0], shape[1])


class _PyAVReader(FrameReader):
    backend: Backend = "pyav"

    def __init__(self, info: VideoInfo, start: int, stop: int | None, strict: bool = False) -> None:
        import av  # heavy import, only on the data plane

        super().__init__(info, start, stop, strict)
        self._turns = info.rotation // 90  # PyAV never rotates
        self._yuv = yuv_capable(info)
        self.corrupt_packets = 0
        self._next_index = start
        try:
            self._open_container()
        except av.FFmpegError as err:
            raise InputError(f"{info.path}: cannot open for decoding ({_one_line(err)})") from err
        self._frames = self._decoded_frames(start)
        self._first: Frame | None = None
        if stop is not None and start >= stop:
            return
        self._first = next(self._frames, None)
        if self._first is None and start == 0:
            self.close()
            why = (f"{self.corrupt_packets} damaged packets" if self.corrupt_packets
                   else "the stream holds no decodable frame")
            raise InputError(f"{info.path}: no video frame could be decoded ({why})")

    def _open_container(self) -> None:
        import av

        self._container = av.open(self.path)
        self._stream = self._container.streams.video[self._video_ordinal(self._container)]
        # Frame threading: several times faster on H.264/HEVC; safe for sequential reads.
        self._stream.thread_type = "AUTO"

    def _video_ordinal(self, container: av.container.InputContainer) -> int:
        # VideoInfo keeps the container-wide stream index; PyAV's streams.video is video-only.
        for ordinal, stream in enumerate(container.streams.video):
            if stream.index == self.info.video_stream_index:
                return ordinal
        return 0

    def _decoded_frames(self, start: int) -> Iterator[Frame]:
        """Decoded frames from index ``start`` on, with their source indices and times."""
        last_time: float | None = None
        step = 1.0 / self.info.fps if self.info.fps > 0 else 0.0
        for av_frame in self._av_frames_from(start):
            t = av_frame.time
            if t is None:  # a stream without timestamps: extrapolate at the average rate
                t = self.info.start_time if last_time is None else last_time + step
            last_time = t
            rgb = _turn(av_frame.to_ndarray(format="rgb24"), self._turns)
            yuv = av_frame.to_ndarray(format="yuv420p") if self._yuv and av_frame.format.name == "yuv420p" else None
            yield Frame(self._next_index, float(t), rgb, yuv)
            self._next_index += 1

    def _av_frames_from(self, start: int) -> Iterator[av.VideoFrame]:
        """PyAV frames from index ``start`` on.

        PyAV seeks by time, so map the index to a pts with a demux-only pass (no decoding) over
        the packets' presentation times sorted into display order, seek to the keyframe before
        it and drop the lead-in. Where the seek does not land on that exact frame (MPEG-TS seeks
        are not keyframe-exact) or timestamps are missing, decode from the start and skip.
        """
        if start == 0:
            yield from self._decode_packets()
            return
        pts = self._packet_pts()
        if pts is not None and start >= len(pts):
            self._warn(f"start {start} is past the last frame ({len(pts) - 1})")
            return
        if pts is not None:
            target = pts[start]
            self._container.seek(target, stream=self._stream, backward=True)
            kept = (f for f in self._decode_packets() if f.pts is None or f.pts >= target)
            head = next(kept, None)
            if head is not None and head.pts == target:
                yield head
                yield from kept
                return
            log.info("%s: seek to frame %d missed; decoding from the start", self.path, start)
            self._container.close()
            self._open_container()
        yield from itertools.islice(self._decode_packets(), start, None)

    def _packet_pts(self) -> list[int] | None:
        import av

        values: list[int] = []
        with av.open(self.path) as container:
            stream = container.streams.video[self._video_ordinal(container)]
            for packet in container.demux(stream):
                if packet.size == 0 or packet.is_discard:
                    continue  # the flush packet, or one the demuxer drops (edit lists)
                if packet.pts is None:
                    return None
                values.append(packet.pts)
        values.sort()
        return values

    def _decode_packets(self) -> Iterator[av.VideoFrame]:
        import av

        packets = self._container.demux(self._stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as err:
                # Reading the container failed mid-way (truncated, I/O): keep what decoded.
                self._warn(f"reading stopped: {_one_line(err)}")
                return
            try:
                decoded = packet.decode()
            except av.FFmpegError as err:
                if self.strict:
                    raise DamagedSource(f"{self.path}: damaged data at frame {self._next_index} ({_one_line(err)}): a file "
                                     "corrupt in the middle cannot be split into chunks; process it as one chunk "
                                     "(chunk_frames at least its frame count) or repair it (ffmpeg -i in -c:v libx264 "
                                     "out.mp4)") from err
                # Like the ffmpeg CLI, skip a damaged packet and go on; the caller sees fewer
                # frames than promised. A file without one good frame fails in __init__.
                self.corrupt_packets += 1
                self._warn(f"damaged packet skipped: {_one_line(err)}")
                continue
            yield from decoded

    def __iter__(self) -> Iterator[Frame]:
        try:
            if self._first is None:
                return
            first, self._first = self._first, None
            yield first
            for frame in self._frames:
                if self._stop is not None and frame.index >= self._stop:
                    return
                yield frame
            self._ended_at(self._next_index)
        finally:
            self.close()

    def close(self) -> None:
        self._frames.close()
        self._container.close()


_DONE = object()


@dataclass
class _Failure:
    error: BaseException


class DecodeThread:
    """Run a frame iterator in a background thread, handing frames over a bounded queue.

    Iterate it to get the frames in order; an exception raised while decoding is re-raised in
    the consumer. ``busy_seconds`` counts time spent producing frames, not time blocked on a full
    queue, so a benchmark can tell whether decode or the consumer is the bottleneck.
    Always ``close()`` it (or use ``with``): that stops the thread even mid-stream.
    """

    _POLL_S = 0.05  # how often a blocked side re-checks for close()

    def __init__(self, frames: Iterable[Frame], maxsize: int = 8, name: str = "decode") -> None:
        self.busy_seconds = 0.0
        self.frames_decoded = 0
        self._frames = frames
        self._queue: queue.Queue[object] = queue.Queue(maxsize=maxsize)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        iterator: Iterator[Frame] | None = None
        try:
            iterator = iter(self._frames)
            while not self._closed.is_set():
                t0 = time.perf_counter()
                try:
                    frame = next(iterator)
                except StopIteration:
                    break
                finally:
                    self.busy_seconds += time.perf_counter() - t0
                self.frames_decoded += 1
                if not self._put(frame):
                    return
            self._put(_DONE)
        except BaseException as err:  # noqa: BLE001 - handed to the consumer, not swallowed
            self._put(_Failure(err))
        finally:
            self._close_source(iterator)

    @staticmethod
    def _close_source(iterator: Iterator[Frame] | None) -> None:
        # Close the generator in the thread that ran it (a generator cannot be closed from
        # another thread while it runs): this releases the reader's files when stopped early.
        close = getattr(iterator, "close", None)
        if close is None:
            return
        try:
            close()
        except Exception:  # noqa: BLE001 - the frames are delivered; a cleanup error is noise
            log.exception("closing the frame source failed")

    def _put(self, item: object) -> bool:
        """Put unless closed; polling so close() can never deadlock against a full queue."""
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=self._POLL_S)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Iterator[Frame]:
        while not self._closed.is_set():
            try:
                item = self._queue.get(timeout=self._POLL_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    return  # cannot happen unless the thread died without a word; never hang
                continue
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.error
            yield item  # type: ignore[misc]

    def close(self, timeout: float = 10.0) -> None:
        """Stop the thread and drop queued frames. Safe to call twice or after the end."""
        self._closed.set()
        self._drain()  # a producer blocked in put() sees the flag within one poll
        self._thread.join(timeout)
        self._drain()  # frames put after the first drain: release their memory

    def _drain(self) -> None:
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def __enter__(self) -> DecodeThread:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


_READERS = {"pyav": _PyAVReader, "decord": _DecordReader}
