"""Turn a manifest into a job: validate, record, enqueue one probe task per video, return.

The producer never probes or downloads videos itself, so a 10,000-line manifest is accepted in
seconds; each video's probe task plans its chunks and starts its chain. It streams: lines are read,
validated, recorded and enqueued ``BATCH`` at a time (one Redis round trip to record a batch, one
pipelined publish of its tasks), so its memory does not grow with the manifest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from celery import Celery

from pipeline.control.manifest import Rejected, read_manifest, scan_manifest
from pipeline.core.celery_app import PROBE, queue_for
from pipeline.core.errors import InputError
from pipeline.core.retention import keep_job
from pipeline.core.specs import DEFAULT_MAX_PROMPTS, VideoSpec
from pipeline.core.status import StatusStore

BATCH = 1000  # videos recorded per round trip and tasks per pipelined publish


@dataclass
class Submitted:
    job_id: str
    created: bool  # False: the idempotency key named an existing job
    accepted: int
    rejected: int


@dataclass
class _Tally:
    accepted: int = 0
    rejected: int = 0
    first_rejected: list[Rejected] = field(default_factory=list)  # the first few, for a refusal's message

    def note(self, rejected: list[Rejected]) -> None:
        self.rejected += len(rejected)
        self.first_rejected += rejected[:5 - len(self.first_rejected)]

    def reasons(self) -> str:
        return "; ".join(f"line {r.line}: {r.reason}" for r in self.first_rejected)


def submit_manifest(app: Celery, store: StatusStore, data: bytes | Path, source_name: str, *, name: str = "",
                    default_prompt: str | None = None, idempotency_key: str | None = None,
                    strict: bool = False, allow_local: bool = False, lane: str = "batch",
                    max_prompts: int = DEFAULT_MAX_PROMPTS, batch: int = BATCH, on_done: str | None = None) -> Submitted:
    """``data``: the manifest's bytes, or a file read line by line (``manifest_file``).
    ``max_prompts``: the caller's ``settings.max_prompts``; a line with more prompts is rejected.
    ``on_done``: a URL the worker that ends the job POSTs its outcome to (workers/jobs/job_hook.py)."""
    scan = scan_manifest(data, source_name, default_prompt)
    job_id = store.new_job_id()
    # Workers read local paths only for a job that allowed them (workers/jobs/sources.py stage_source).
    spec = {"source": source_name, "default_prompt": default_prompt, "lane": lane, "allow_local": allow_local}
    if on_done:
        spec["on_done"] = on_done
    # The default name is the manifest's file name, not the submitter's path to it: the name travels
    # (the --on-done hook's body, the API, `sam3v jobs` on other machines).
    job = JobWriter(store, job_id, name or Path(source_name).name or source_name, spec, batch)
    with read_manifest(data, source_name, scan, default_prompt, allow_local, max_prompts) as entries:
        if strict:  # nothing is enqueued until every line has passed
            tally = job.record(entries, send=None)
            if tally.rejected:
                job.discard()
                raise InputError(f"{source_name}: {tally.rejected} bad line(s), job refused (--strict): "
                                 f"{tally.reasons()}")
            _refuse_if_empty(job, tally, source_name)
            if idempotency_key and (held := _claim(store, idempotency_key, job_id, scan.digest)):
                job.discard()
                return held
            job.open()
            with publisher(app, batch) as send:
                for start in range(0, tally.accepted, batch):
                    send(job_id, store.video_ids(job_id, start, batch), lane)
        else:
            if idempotency_key and (held := _claim(store, idempotency_key, job_id, scan.digest)):
                return held
            with publisher(app, batch) as send:
                tally = job.record(entries, send=lambda ids: send(job_id, ids, lane))
            if not tally.accepted and idempotency_key:
                store.release_idempotency(idempotency_key, job_id, scan.digest)
            _refuse_if_empty(job, tally, source_name)
    store.event(job_id, "job_created", {"total": tally.accepted, "rejected": tally.rejected})
    return Submitted(job_id, True, tally.accepted, tally.rejected)


def _claim(store: StatusStore, key: str, job_id: str, digest: str) -> Submitted | None:
    """None when ``key`` is ours now; the job that holds it when the same manifest was sent before."""
    held_job, held_digest = store.claim_idempotency(key, job_id, digest)
    if held_job == job_id:
        return None
    if held_digest != digest:
        raise InputError(f"--idempotency-key {key!r} was used for job {held_job} with a different manifest; "
                         "use a new key")
    return Submitted(held_job, False, 0, 0)


def _refuse_if_empty(job: JobWriter, tally: _Tally, source_name: str) -> None:
    if not tally.accepted:
        job.discard()
        first = tally.reasons()
        raise InputError(f"{source_name}: no valid video line{': ' + first if first else ''}")


class JobWriter:
    """Records a job's manifest lines as they stream past, ``batch`` videos at a time."""

    def __init__(self, store: StatusStore, job_id: str, name: str, spec: dict, batch: int):
        self.store, self.job_id, self.name, self.spec, self.batch = store, job_id, name, spec, batch
        self.opened = False

    def open(self) -> None:
        self.store.open_job(self.job_id, self.name, self.spec)
        self.opened = True

    def discard(self) -> None:
        self.store.discard_job(self.job_id)

    def record(self, entries: Iterable[VideoSpec | Rejected], send: Callable[[list[str]], None] | None) -> _Tally:
        """Record every entry; ``send(ids)`` enqueues recorded videos (None: record only). The job is
        opened before its first task is sent. One recorded video is always held back until the next
        batch, so the last batch, which sets the job's final total, has a task to send after it:
        no video can end the job before its total is final."""
        tally = _Tally()
        videos: list[VideoSpec] = []
        rejected: list[Rejected] = []
        unsent: list[str] = []

        def flush(last: bool) -> None:
            if videos or (last and tally.accepted):
                repeats = self.store.add_videos(self.job_id, [v.model_dump() for v in videos], last)
                taken = dict(repeats)
                rejected.extend(Rejected(line=videos[i].line, reason=f"id: {videos[i].id!r} repeats line {first}")
                                for i, first in repeats)
                rejected.sort(key=lambda r: r.line)
                fresh = [v.id for i, v in enumerate(videos) if i not in taken]
                tally.accepted += len(fresh)
                unsent.extend(fresh)
            self.store.add_rejected(self.job_id, [r.model_dump() for r in rejected])
            tally.note(rejected)
            videos.clear()
            rejected.clear()
            ready = unsent if last else unsent[:-1]
            if send is not None and ready:
                if not self.opened:
                    self.open()
                send(list(ready))
                del unsent[:len(ready)]

        for entry in entries:
            (rejected if isinstance(entry, Rejected) else videos).append(entry)
            if len(videos) >= self.batch or len(rejected) >= self.batch:
                flush(last=False)
        flush(last=True)
        return tally


def retry_videos(app: Celery, store: StatusStore, job_id: str, video_ids: list[str], lane: str = "batch") -> None:
    """Run these videos of a job again, from their first task, under a new attempt each."""
    for vid in video_ids:
        store.reset_deliveries(job_id, vid)
    keep_job(store.r, job_id)  # it runs again: its records must not expire under it
    enqueue_videos(app, job_id, video_ids, lane, attempts=store.reopen(job_id, video_ids))


def enqueue_videos(app: Celery, job_id: str, video_ids: list[str], lane: str = "batch",
                   attempts: dict[str, int] | None = None) -> None:
    """Send each video's first task; ``attempts`` (from ``StatusStore.reopen``) for a retry."""
    with publisher(app, BATCH) as send:
        send(job_id, video_ids, lane, attempts)


@contextmanager
def publisher(app: Celery, batch: int) -> Iterator[Callable[..., None]]:
    """``send(job_id, video_ids, lane, attempts=None)``: each video's probe task, published in one
    pipelined round trip per ``batch`` messages where the broker allows it (kombu's publish batches:
    Redis), one at a time otherwise. One connection for all: per-message connections would cap the
    enqueue rate."""
    with app.producer_or_acquire() as producer:
        def send(job_id: str, video_ids: list[str], lane: str, attempts: dict[str, int] | None = None) -> None:
            with producer.batch(batch) if producer.supports_batch_publish else _no_batch() as pending:
                for vid in video_ids:
                    kwargs = {"attempt": attempts[vid]} if attempts else {}
                    app.send_task(PROBE, args=[job_id, vid], kwargs=kwargs, producer=producer,
                                  queue=queue_for("cpu", lane))
                if pending is not None:
                    pending.flush()  # in Redis before the next batch is read

        yield send


@contextmanager
def _no_batch():
    yield None
