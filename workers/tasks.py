"""Celery tasks: probe (cpu) -> segment_chunk x N (gpu) -> finalize (cpu), per video.

Each task calls exactly one step of ``workers.video_steps`` and records its outcome in the status
store. Tasks are registered with ``shared_task``: no Celery app is built when this module is
imported; the entry point builds one from its settings (``workers.runtime.worker_app``).

Each task is idempotent: the same inputs give the same storage keys, and a redelivered task that
finds its work done returns. A chunk that keeps killing its worker fails its video after
``max_redeliveries`` deliveries instead of looping. Input errors fail only their video. A retried
video runs under a new attempt number; tasks of an earlier attempt stop at their next step.

Redis or storage out of reach is nobody's fault: the task waits for Redis (it cannot even publish a
retry without it), then runs again later (``outage_retries``, backing off), and its delivery is not
counted against the redelivery limit. A fault of the worker itself (its model, GPU, disk or storage
access: ``workers.blame``) fails no video either: the task goes back to the queue uncounted and the
worker takes itself out of service (``workers.service``). Each task beats while it works (``pipeline.core.heartbeats``);
work lost in a way no task can report is found by ``workers.sweeper``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import redis
from celery import Task, chain, shared_task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from pipeline.control import schedules
from pipeline.core.celery_app import CLOSE_CANCELLED, FINALIZE, PROBE, SEGMENT_CHUNK, queue_for
from pipeline.core.errors import Cancelled, InputError, Sam3vError
from pipeline.core.heartbeats import Heartbeats
from pipeline.core.layout import JobKeys, VideoKeys
from pipeline.core.planning import PART_FRAMES, Chunk
from pipeline.core.specs import VideoSpec
from pipeline.core.storage import StorageUnavailable
from workers import service, sweeper  # sweeper: publish hooks and the sweeper thread of worker masters
from workers.blame import worker_fault
from workers.cancel_cleanup import close_cancelled, drop_cancelled_work, drop_failed_work, drop_finished_work
from workers.runtime import Context, context, model
from workers.sources import local_source, stage_source
from workers.video_state import fail_video, finish_video, stop_if_not_wanted

OUTAGES = (redis.ConnectionError, redis.TimeoutError, StorageUnavailable)

log = logging.getLogger(__name__)


def task_context(task: Task) -> Context:
    """``context()`` inside a task; if Redis or storage cannot be reached the video is not at fault:
    the task runs again later instead of leaving its video unfinished."""
    try:
        return context()
    except Exception as err:
        log.warning("%s: cannot reach Redis or storage (%s); retrying", task.name, err)
        raise task.retry(exc=err, countdown=5, max_retries=10) from None


class VideoFailed(Exception):
    """The task failed its video and recorded why: the task ends FAILURE (a ``task-failed`` event:
    Flower shows it failed and counts it), instead of staying STARTED there as an ignored task did."""


class VideoTask(Task):
    """A task about one video (args: job_id, video_id, ...). Whatever escapes its body (a time
    limit hit outside its own handlers, a bug) fails that video with the reason, so no video is
    left unfinished and its job open forever."""

    throws = (VideoFailed,)  # expected: logged as one line, without a traceback

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        if isinstance(exc, VideoFailed):
            return  # recorded by the task itself
        job_id, video_id = args[0], args[1]
        try:
            fail_video(context(), job_id, video_id, (kwargs or {}).get("attempt", 0),
                       f"internal error in {self.name}: {type(exc).__name__}: {exc}")
        except Exception:
            log.exception("%s: could not record the failure of %s/%s", self.name, job_id, video_id)


def _wait_for_redis(ctx: Context, limit: float) -> None:
    deadline = time.monotonic() + limit
    pause = 0.5
    while True:
        try:
            ctx.status.r.ping()
            return
        except (redis.ConnectionError, redis.TimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)
            pause = min(5.0, pause * 2)


def _retry_later(task: Task, ctx: Context, err: Exception, uncount: Callable[[], None] | None) -> None:
    """An outage interrupted the task: run it again later, its delivery not counted."""
    log.warning("%s: %s; running it again later", task.name, err)
    # Publishing the retry needs the broker (Redis), and the attempt's records need Redis too.
    _wait_for_redis(ctx, max(5.0, ctx.settings.task_time_limit / 2))
    if uncount:
        uncount()
    retries = task.request.retries
    raise task.retry(exc=err, countdown=min(60, 2 ** retries), max_retries=ctx.settings.outage_retries)


def _not_wanted(task: Task, ctx: Context, job_id: str, video_id: str, attempt: int) -> None:
    """End a task whose work is no longer wanted: REVOKED in Flower (a ``task-revoked`` event with
    the reason), ignored by Celery (no retry, no failure); a cancelled video's ``work/`` goes."""
    try:
        entry = ctx.status.video(job_id, video_id)
        if int(entry.get("attempt") or 0) != attempt:
            reason = f"superseded: its video runs again as attempt {entry.get('attempt')}"
        elif entry.get("status") == "succeeded":
            reason = "its video already ended (succeeded)"
            if drop_finished_work(ctx, job_id, video_id, attempt):
                reason += "; its work files removed"
        elif entry.get("status") == "cancelled" or ctx.status.is_cancelled(job_id):
            reason = "cancelled"
            drop_cancelled_work(ctx, job_id, video_id, attempt)
        else:
            reason = f"its video already ended ({entry.get('status')})"
    except OUTAGES as err:  # the reason is for people; sam3v.close_cancelled removes work/ too
        reason = "no longer wanted"
        log.warning("%s/%s: %s (work files may be left in storage)", job_id, video_id, err)
    log.info("%s of %s/%s: %s", task.name, job_id, video_id, reason)
    try:
        task.send_event("task-revoked", reason=reason, terminated=False, signum=None, expired=False, retry=False)
    except Exception as err:  # a monitoring event only: never a reason to run the task again
        log.warning("%s: could not send its task-revoked event: %s", task.name, err)
    raise Ignore()


def _blame_worker(ctx: Context, err: Exception, uncount: Callable[[], None] | None) -> None:
    """If ``err`` is this worker's fault, not the video's: the task goes back to the queue, its
    delivery not counted, and the worker out of service. Returns when the video is at fault."""
    reason = worker_fault(err, ctx.settings.model) if service.active() else None
    if reason is None:
        return
    if uncount:
        uncount()
    service.out_of_service(reason)
    service.hand_back(reason)


def _guarded(task: Task, ctx: Context, job_id: str, video_id: str, attempt: int, what: str, step: Callable,
             uncount: Callable[[], None] | None = None):
    """Run ``step``; an error fails this video (with a message for the user) and keeps the worker;
    an outage of Redis or storage runs the task again later."""
    bad_input = False
    try:
        return step()
    except OUTAGES as err:
        _retry_later(task, ctx, err, uncount)
    except Cancelled as err:  # the video was cancelled or moved on: nothing to record, nobody to fail
        log.info("%s of %s/%s: %s", what, job_id, video_id, err)
        _not_wanted(task, ctx, job_id, video_id, attempt)
    except SoftTimeLimitExceeded:
        message = f"{what} ran past the task time limit ({ctx.settings.task_time_limit} s)"
    except Sam3vError as err:
        _blame_worker(ctx, err, uncount)
        message = str(err)
        bad_input = isinstance(err, InputError)
    except Exception as err:  # a bug: fail this video, keep the worker (unless the worker is at fault)
        _blame_worker(ctx, err, uncount)
        log.exception("%s of %s/%s failed", what, job_id, video_id)
        message = f"internal error in {what}: {type(err).__name__}: {err}"
    fail_video(ctx, job_id, video_id, attempt, message)
    if bad_input:  # the source is at fault: its chunks' work cannot serve a retry
        try:
            drop_failed_work(ctx, job_id, video_id, attempt)
        except OUTAGES as err:
            log.warning("%s/%s: work files left in storage: %s", job_id, video_id, err)
    raise VideoFailed(message)


def _started(task: Task, ctx: Context, job_id: str, video_id: str, attempt: int) -> None:
    """The checks every task makes first; then it shows a sign of life."""
    service.refuse_if_out_of_service()
    try:
        stop_if_not_wanted(ctx, job_id, video_id, attempt)
        Heartbeats(ctx.status.r).beat(job_id, video_id)
    except OUTAGES as err:
        _retry_later(task, ctx, err, None)
    except Ignore:
        _not_wanted(task, ctx, job_id, video_id, attempt)


def _spec(ctx: Context, job_id: str, video_id: str) -> VideoSpec:
    return VideoSpec.model_validate(ctx.status.item(job_id, video_id))


@shared_task(name=PROBE, bind=True, base=VideoTask)
def probe_task(self, job_id: str, video_id: str, attempt: int = 0) -> None:
    """Step 1, prepare: stage and probe the source, plan the chunks, start the video's chain."""
    from workers.video_steps import prepare

    ctx = task_context(self)
    _started(self, ctx, job_id, video_id, attempt)

    def step():
        spec = _spec(ctx, job_id, video_id)
        ctx.status.update_video(job_id, video_id, fence=attempt, status="processing", started=time.time())
        ctx.status.record_results(job_id, ctx.storage.uri(JobKeys(job_id).results))  # where it will be
        source = stage_source(ctx.storage, ctx.settings, job_id, video_id, {"video": spec.video})
        path = local_source(ctx.storage, ctx.settings, source, job_id, video_id)
        plan = prepare(path, spec, spec.video, ctx.settings.chunk_seconds)
        ctx.status.update_video(job_id, video_id, fence=attempt, source=source, frames_total=plan.num_frames,
                                frames_done=0, chunks_total=len(plan.chunks), chunks_done=0,
                                part_frames=ctx.settings.part_frames, frame_batch=ctx.settings.frame_batch)
        return plan

    plan = _guarded(self, ctx, job_id, video_id, attempt, "probe", step)
    lane = ctx.status.job_spec(job_id).get("lane", "batch")
    gpu, cpu = queue_for("gpu", lane), queue_for("cpu", lane)
    steps = [segment_chunk_task.si(job_id, video_id, c.index, c.start, c.stop, c.final, plan.num_frames,
                                   attempt=attempt).set(queue=gpu) for c in plan.chunks]
    chain(*steps, finalize_task.si(job_id, video_id, len(plan.chunks), attempt=attempt).set(queue=cpu)).apply_async()


def _progress(ctx: Context, job_id: str, video_id: str, attempt: int) -> Callable[[int], None]:
    """Frames done and a heartbeat, written at most every 2 s. Best effort: a chunk does not stop
    for a Redis blip; its outcome is recorded (or retried) when it ends."""
    last_report = [0.0]
    beats = Heartbeats(ctx.status.r)

    def report(done: int) -> None:
        if time.monotonic() - last_report[0] > 2.0:
            last_report[0] = time.monotonic()
            try:
                beats.beat(job_id, video_id)
                ctx.status.update_video(job_id, video_id, fence=attempt, frames_done=done)
            except (redis.ConnectionError, redis.TimeoutError) as err:
                log.warning("progress of %s/%s not recorded: %s", job_id, video_id, err)

    return report


def _wanted(ctx: Context, job_id: str, video_id: str, attempt: int) -> bool:
    """False once the video is cancelled, ended or retried under a new attempt."""
    try:
        stop_if_not_wanted(ctx, job_id, video_id, attempt)
    except Ignore:
        return False
    return True


def _soft_deadline(task: Task) -> float:
    """When the task's soft time limit passes (monotonic clock). Celery enforces its limits only in
    prefork (and gevent) pools; a GPU worker with several streams runs a threads pool, so the chunk
    enforces the same limit itself, at its next frame."""
    limit = task.soft_time_limit or task.app.conf.task_soft_time_limit or task.app.conf.task_time_limit
    return time.monotonic() + limit if limit else float("inf")


def _stop_check(ctx: Context, job_id: str, video_id: str, attempt: int, every: float = 1.0,
                deadline: float = float("inf")) -> Callable[[], bool]:
    """A running chunk's ``should_stop``: asked every frame, it reads Redis at most every ``every``
    seconds. A Redis blip is not a reason to stop: the next check asks again. Past ``deadline`` it
    raises ``SoftTimeLimitExceeded``, as Celery's own soft limit would."""
    next_check = [time.monotonic() + every]

    def should_stop() -> bool:
        if time.monotonic() > deadline:
            raise SoftTimeLimitExceeded("the chunk ran past its soft time limit")
        if time.monotonic() < next_check[0]:
            return False
        next_check[0] = time.monotonic() + every
        try:
            return not _wanted(ctx, job_id, video_id, attempt)
        except (redis.ConnectionError, redis.TimeoutError) as err:
            log.warning("cannot tell whether %s/%s is still wanted: %s", job_id, video_id, err)
            return False

    return should_stop


@shared_task(name=SEGMENT_CHUNK, bind=True, base=VideoTask)
def segment_chunk_task(self, job_id: str, video_id: str, k: int, start: int, stop: int, final: bool,
                       num_frames: int, attempt: int = 0, alone: bool = False) -> None:
    """Step 2, run chunk k: frames [start, stop), tracker memory carried in from chunk k-1.
    ``alone``: run with the worker's engine to itself (it ran out of GPU memory beside others)."""
    from workers.engine import OutOfMemory
    from workers.probe import probe
    from workers.tracker import check_prompts
    from workers.video_steps import VideoRun, chunk_needed, document_header, run_chunk

    ctx = task_context(self)
    _started(self, ctx, job_id, video_id, attempt)
    work = VideoKeys(job_id, video_id).work
    if not _guarded(self, ctx, job_id, video_id, attempt, f"chunk {k}", lambda: chunk_needed(ctx.storage, work, k)):
        return  # done before (a redelivery) or after the end of the stream: not a delivery to count
    deliveries = _guarded(self, ctx, job_id, video_id, attempt, f"chunk {k}",
                          lambda: ctx.status.count_delivery(job_id, video_id, k))
    if deliveries > ctx.settings.max_redeliveries:
        message = (f"chunk {k} (frames {start}-{stop - 1}) was started {deliveries - 1} times and never "
                   "finished: it kills its worker (out of memory?)")
        fail_video(ctx, job_id, video_id, attempt, message)
        raise VideoFailed(message)

    def step():
        entry = ctx.status.video(job_id, video_id)
        spec = _spec(ctx, job_id, video_id)
        loaded = model()
        Heartbeats(ctx.status.r).beat(job_id, video_id)
        prompts = check_prompts(loaded.tokenizer, spec.prompts)
        info = probe(local_source(ctx.storage, ctx.settings, entry["source"], job_id, video_id))
        if k == 0:
            header_model, params = document_header(loaded, spec, prompts)
            ctx.status.update_video(job_id, video_id, fence=attempt,
                                    header={"model": header_model, "params": params, "prompts": prompts})
        # Videos planned before frame batches were recorded ran with 1: their chunks keep it.
        video = VideoRun(info, spec, prompts, num_frames, entry.get("part_frames") or PART_FRAMES,
                         ctx.settings.decoder, int(entry.get("frame_batch") or 1))
        try:
            result = run_chunk(video, Chunk(k, start, stop, final), loaded, ctx.storage, work,
                               _progress(ctx, job_id, video_id, attempt),
                               _stop_check(ctx, job_id, video_id, attempt, deadline=_soft_deadline(self)), alone,
                               ctx.settings.max_batch)
        except OutOfMemory as err:
            if err.alone:
                raise OutOfMemory(f"chunk {k} ran out of GPU memory even with the engine to itself: {err}", True) from err
            return err  # beside other streams: run again alone (below), not counted
        warnings = result.warnings if result else []
        ctx.status.update_video(job_id, video_id, fence=attempt, frames_done=min(stop - spec.start_frame, num_frames),
                                chunks_done=k + 1, warnings=(entry.get("warnings") or []) + warnings)

    def uncount() -> None:
        """The outage stopped this start before the chunk was done: it will start again, once."""
        try:
            done = ctx.storage.exists(work.done(k))
        except OUTAGES:
            done = False
        if not done:
            ctx.status.count_delivery(job_id, video_id, k, by=-1)

    out_of_memory = _guarded(self, ctx, job_id, video_id, attempt, f"chunk {k}", step, uncount)
    if out_of_memory is not None:
        log.warning("chunk %d of %s/%s: %s; running it again with the engine to itself", k, job_id, video_id,
                    out_of_memory)
        uncount()
        raise self.retry(kwargs={**(self.request.kwargs or {}), "alone": True}, countdown=0,
                         max_retries=(self.request.retries or 0) + 1)


@shared_task(name=FINALIZE, bind=True, base=VideoTask)
def finalize_task(self, job_id: str, video_id: str, planned_chunks: int, attempt: int = 0) -> None:
    """Step 3, finalize: join the chunks' outputs, mux the audio, record the video's outputs."""
    from workers.probe import probe
    from workers.video_steps import finalize

    ctx = task_context(self)
    _started(self, ctx, job_id, video_id, attempt)
    keys = VideoKeys(job_id, video_id)

    def claim() -> None:
        """Under the attempt's fence, in one step with the cancel check: publish, or publish nothing."""
        if not ctx.status.claim_publishing(job_id, video_id, attempt):
            # Cancelled (or moved on) while it joined the parts: no outputs; the work files go only
            # if no retry's new attempt may be writing there already (_not_wanted).
            raise Cancelled("stopped before publishing its outputs: its video is no longer wanted")

    def step():
        entry = ctx.status.video(job_id, video_id)
        info = probe(local_source(ctx.storage, ctx.settings, entry["source"], job_id, video_id))
        final = finalize(info, entry["header"], ctx.storage, keys.work, planned_chunks, ctx.storage, keys.prefix,
                         entry.get("part_frames") or PART_FRAMES, claim)
        finish_video(ctx, job_id, video_id, attempt, status="succeeded", outputs=final.outputs,
                     num_frames=final.num_frames, num_objects=final.num_objects, frames_done=final.num_frames)

    _guarded(self, ctx, job_id, video_id, attempt, "finalize", step)
    # After the video is recorded: a retried finalize must still find the chunks if recording failed.
    # Cleaning up is part of the task: if it cannot finish (storage away), the task runs again, and a
    # redelivered finalize of a video that succeeded removes work/ (_not_wanted).
    try:
        drop_finished_work(ctx, job_id, video_id, attempt)
    except OUTAGES as err:
        _retry_later(self, ctx, err, None)


@shared_task(name=CLOSE_CANCELLED, bind=True)
def close_cancelled_task(self, job_id: str) -> None:
    """A cancelled job's end: results.jsonl, work/ removed, its records set to expire."""
    ctx = task_context(self)
    try:
        close_cancelled(ctx, job_id)
    except OUTAGES as err:
        _retry_later(self, ctx, err, None)


@shared_task(name=schedules.SCHEDULED_SUBMIT, bind=True)
def scheduled_submit_task(self, name: str, manifest: str, prompt: str | None, cron: str | None,
                          every: float | None) -> str:
    """One firing of a schedule: one job, whichever beat or redelivery sent it."""
    ctx = context()
    return schedules.fire(self.app, ctx.status, name, manifest, prompt, cron, every, ctx.settings.max_prompts)
