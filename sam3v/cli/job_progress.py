"""A job's live progress on a terminal: the videos and frames bars, an ETA from planned frames, and
each failed video said above the bars as soon as it fails.

The frame total is shown, and an ETA computed, only once every video is planned (probed, or ended
without a plan: the job's ``videos_planned`` counter, ``pipeline.core.status``); before that the total
still grows as videos are probed, so the bars say "estimating" rather than a total that later grows.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.core.status import EVENTS, FINAL_JOB_STATES
from sam3v.cli.common import err_console

ESTIMATING = "estimating"
_EVENTS_READ = 500


@dataclass(frozen=True)
class View:
    """What the bars show after one poll."""

    videos_done: int
    videos_total: int
    succeeded: int
    failed: int
    running: int
    frames_done: int
    frames_total: int | None  # None until every video is planned
    rate: float  # frames a second since every video was planned (0 before)
    eta: str  # ESTIMATING, or h:mm:ss


def all_planned(doc: dict) -> bool:
    """Whether the job's frame total is final: every video probed or ended (a submit still streaming
    its manifest in keeps ``total`` one above the videos recorded, so this stays False until then)."""
    planned = doc.get("videos_planned")
    if planned is None:  # a job recorded before the count existed: none waits for its probe any more
        return doc["counts"]["queued"] == 0
    return planned >= doc["total"]


def _clock(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Estimator:
    """Turns successive status documents (counters only) into ``View``s. The rate is measured from
    the first poll at which every video was planned, so it and the ETA rest on the final total."""

    def __init__(self) -> None:
        self._since: tuple[float, int] | None = None  # (time, frames done) when the total became final

    def view(self, doc: dict, now: float | None = None) -> View:
        now = time.monotonic() if now is None else now
        c = doc["counts"]
        done = doc["frames_done"]
        total, rate, eta = None, 0.0, ESTIMATING
        if all_planned(doc):
            total = doc["frames_total"]
            if self._since is None:
                self._since = (now, done)
            t0, f0 = self._since
            if now > t0 and done > f0:
                rate = (done - f0) / (now - t0)
                eta = _clock(max(0, total - done) / rate)
            elif done >= total:
                eta = _clock(0)
        return View(c["succeeded"] + c["failed"] + c["cancelled"], doc["total"], c["succeeded"], c["failed"],
                    c["processing"], done, total, rate, eta)


class FailureFeed:
    """The job's videos that failed, each once, as soon as they fail: read from the event stream
    from the moment the watch began (one scan of the job's videos for those that failed before)."""

    def __init__(self, store, job_id: str) -> None:
        self.store, self.job_id = store, job_id
        newest = store.r.xrevrange(EVENTS, "+", "-", count=1)
        self._last = _text(newest[0][0]) if newest else "0-0"
        self._seen: set[str] = set()
        self._scanned = False

    def new(self, doc: dict) -> list[tuple[str, str]]:
        """(video id, error) of the failures not reported yet; ``doc``: the job's counters now."""
        found: list[tuple[str, str]] = []
        if not self._scanned:
            self._scanned = True
            if doc["counts"]["failed"]:  # failed before the watch began: not in the stream read below
                found += [(v["id"], v.get("error") or "") for v in self.store.status_document(self.job_id)["videos"]
                          if v["status"] == "failed"]
        while True:
            got = self.store.read_events(self._last, count=_EVENTS_READ)
            for event_id, e in got:
                self._last = event_id
                if e["job"] == self.job_id and e["kind"] == "video_failed":
                    found.append((e["data"]["video"], e["data"].get("error") or ""))
            if len(got) < _EVENTS_READ:
                break
        fresh = []
        for video, error in found:
            if video not in self._seen:
                self._seen.add(video)
                fresh.append((video, error))
        return fresh


class Reporter(Protocol):
    def show(self, view: View) -> None: ...

    def failed(self, video: str, error: str) -> None: ...


class Bars:
    """The ``Reporter`` on a terminal: two rich bars on stderr, failures printed above them."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.videos = progress.add_task("videos", total=None, detail="", eta=ESTIMATING)
        self.frames = progress.add_task("frames", total=None, detail="", eta=ESTIMATING)

    def show(self, view: View) -> None:
        self.progress.update(self.videos, total=view.videos_total, completed=view.videos_done, eta=view.eta,
                             detail=f"{view.succeeded} ok, {view.failed} failed, {view.running} running")
        self.progress.update(self.frames, total=view.frames_total, completed=view.frames_done, eta=view.eta,
                             detail=f"{view.rate:.1f} frames/s" if view.frames_total is not None else ESTIMATING)

    def failed(self, video: str, error: str) -> None:
        self.progress.console.print(f"[red]video {video} failed:[/] {error}", highlight=False, soft_wrap=True)


def bars() -> Progress:
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
                    console=err_console)


def follow_live(store, job_id: str, reporter: Reporter, poll: float = 0.5) -> dict:
    """Poll the job's counters until it ends, showing each ``View`` and each failure as it happens;
    returns the final status document (every video)."""
    estimator, failures = Estimator(), FailureFeed(store, job_id)
    while True:
        doc = store.status_document(job_id, limit=0)  # the job's counters: no scan of its videos
        for video, error in failures.new(doc):
            reporter.failed(video, error)
        reporter.show(estimator.view(doc))
        if doc["status"] in FINAL_JOB_STATES:
            return store.status_document(job_id)
        time.sleep(poll)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
