"""Celery tasks: probe (cpu) -> segment_chunk x N (gpu) -> finalize (cpu), per video.

Each task calls exactly one step of ``workers.chunks.video_steps`` and records its outcome in the status
store. Tasks are registered with ``shared_task``: no Celery app is built when this module is
imported; the entry point builds one from its settings (``workers.jobs.app.worker_app``).

Each task is idempotent: the same inputs give the same storage keys, and a redelivered task that
finds its work done returns. A chunk that keeps killing its worker fails its video after
``max_redeliveries`` deliveries instead of looping. Input errors fail only their video. A retried
video runs under a new attempt number; tasks of an earlier attempt stop at their next step.

What a failing step does (fail the video, blame the worker, run again later after an outage) is
``workers.jobs.task_policy``; a running chunk's progress, stop check and deadline are
``workers.jobs.chunk_watch``. Each task beats while it works (``pipeline.core.heartbeats``); work
lost in a way no task can report is found by ``workers.jobs.sweeper``.
"""

from __future__ import annotations

import logging
import time

from celery import chain, shared_task
from pydantic import ValidationError

from pipeline.core.celery_app import (
    CLOSE_CANCELLED,
    FINALIZE,
    PROBE,
    SEGMENT_CHUNK,
    queue_for,
)
from pipeline.core.errors import Cancelled, InputError
from pipeline.core.heartbeats import Heartbeats
from pipeline.core.layout import JobKeys, VideoKeys
from pipeline.core.planning import PART_FRAMES, Chunk, plan_backward
from pipeline.core.specs import VideoSpec, first_error
from pipeline.core.visual_prompts import check_against_video
from workers.jobs import sweeper  # noqa: F401  (publish hooks and the sweeper thread of worker masters)
from workers.jobs.cancel_cleanup import close_cancelled, drop_finished_work
from workers.jobs.chunk_watch import progress_reporter, soft_deadline, stop_check
from workers.jobs.context import Context, model
from workers.jobs.outcomes import fail_video, finish_video
from workers.jobs.sources import local_source, stage_source
from workers.jobs.task_policy import (
    OUTAGES,
    VideoFailed,
    VideoTask,
    guarded,
    retry_later,
    started,
    task_context,
)

log = logging.getLogger(__name__)


def _spec(ctx: Context, job_id: str, video_id: str) -> VideoSpec:
    """The video's request, checked again: one stored by an older version may no longer be valid
    (exemplars without a text prompt were taken before #22's entry checks): the video fails saying why."""
    try:
        return VideoSpec.model_validate(ctx.status.item(job_id, video_id))
    except ValidationError as err:
        where, why = first_error(err)
        raise InputError(f"{where}: {why}") from None


@shared_task(name=PROBE, bind=True, base=VideoTask)
def probe_task(self, job_id: str, video_id: str, attempt: int = 0) -> None:
    """Step 1, prepare: stage and probe the source, plan the chunks, start the video's chain."""
    from workers.chunks.video_steps import prepare
    from workers.model.visual_objects import backward_span, visual_objects

    ctx = task_context(self)
    started(self, ctx, job_id, video_id, attempt)

    def step():
        spec = _spec(ctx, job_id, video_id)
        ctx.status.update_video(job_id, video_id, fence=attempt, status="processing", started=time.time())
        ctx.status.record_results(job_id, ctx.storage.uri(JobKeys(job_id).results))  # where it will be
        source = stage_source(ctx.storage, ctx.settings, job_id, video_id, {"video": spec.video})
        path = local_source(ctx.storage, ctx.settings, source, job_id, video_id)
        plan = prepare(path, spec, spec.video, ctx.settings.chunk_seconds)
        # A visual prompt the video cannot hold (a frame past its end, a box outside it) fails the
        # video here, before any chunk: the request could not be checked without the video.
        check_against_video(spec, plan.info.width, plan.info.height,
                            plan.info.frames_expected or spec.start_frame + plan.num_frames)
        # Objects prompted after the first frame are tracked back to it first: the backward pass's
        # chunks run before the forward ones, and progress counts the frames of both passes.
        span = backward_span(visual_objects(spec.objects, spec.start_frame, plan.info.height, plan.info.width))
        backward = plan_backward(plan.chunks, span, spec.start_frame)
        ctx.status.update_video(job_id, video_id, fence=attempt, source=source, frames_total=span + plan.num_frames,
                                frames_done=0, chunks_total=len(backward) + len(plan.chunks), chunks_done=0,
                                backward_frames=span, backward_chunks=len(backward),
                                part_frames=ctx.settings.part_frames, frame_batch=ctx.settings.frame_batch)
        return plan, backward

    plan, backward = guarded(self, ctx, job_id, video_id, attempt, "probe", step)
    lane = ctx.status.job_spec(job_id).get("lane", "batch")
    gpu, cpu = queue_for("gpu", lane), queue_for("cpu", lane)
    steps = [segment_chunk_task.si(job_id, video_id, c.index, c.start, c.stop, c.final, plan.num_frames,
                                   attempt=attempt, backward=True).set(queue=gpu) for c in backward]
    steps += [segment_chunk_task.si(job_id, video_id, c.index, c.start, c.stop, c.final, plan.num_frames,
                                    attempt=attempt).set(queue=gpu) for c in plan.chunks]
    chain(*steps, finalize_task.si(job_id, video_id, len(plan.chunks), attempt=attempt).set(queue=cpu)).apply_async()


@shared_task(name=SEGMENT_CHUNK, bind=True, base=VideoTask)
def segment_chunk_task(self, job_id: str, video_id: str, k: int, start: int, stop: int, final: bool,
                       num_frames: int, attempt: int = 0, alone: bool = False, backward: bool = False) -> None:
    """Step 2, run chunk k: frames [start, stop), tracker memory carried in from chunk k-1.
    ``backward``: chunk k of the backward pass (frames in decreasing order, its session carried in
    from backward chunk k+1; all of them run before forward chunk 0).
    ``alone``: run with the worker's engine to itself (it ran out of GPU memory beside others)."""
    from workers.chunks.video_steps import (
        VideoRun,
        chunk_needed,
        document_header,
        merged_warnings,
        run_backward,
        run_chunk,
    )
    from workers.media.probe import probe
    from workers.model.engine import OutOfMemory
    from workers.model.tracker import check_prompts

    ctx = task_context(self)
    started(self, ctx, job_id, video_id, attempt)
    work = VideoKeys(job_id, video_id).work
    marker = work.backward.done(k) if backward else work.done(k)
    name = f"backward chunk {k}" if backward else f"chunk {k}"

    def needed() -> bool:
        return not ctx.storage.exists(marker) if backward else chunk_needed(ctx.storage, work, k)

    if not guarded(self, ctx, job_id, video_id, attempt, name, needed):
        return  # done before (a redelivery) or after the end of the stream: not a delivery to count
    delivery_key = f"b{k}" if backward else k
    deliveries = guarded(self, ctx, job_id, video_id, attempt, name,
                         lambda: ctx.status.count_delivery(job_id, video_id, delivery_key))
    if deliveries > ctx.settings.max_redeliveries:
        message = (f"{name} (frames {start}-{stop - 1}) was started {deliveries - 1} times and never "
                   "finished: it kills its worker (out of memory?)")
        fail_video(ctx, job_id, video_id, attempt, message)
        raise VideoFailed(message)

    def step():
        entry = ctx.status.video(job_id, video_id)
        spec = _spec(ctx, job_id, video_id)
        loaded = model()
        Heartbeats(ctx.status.r).beat(job_id, video_id)
        prompts = check_prompts(loaded.tokenizer, spec.prompts, visual=bool(spec.objects),
                                exemplars=bool(spec.exemplars))
        info = probe(local_source(ctx.storage, ctx.settings, entry["source"], job_id, video_id))
        if k == 0 and not backward:
            header_model, params = document_header(loaded, spec, prompts)
            ctx.status.update_video(job_id, video_id, fence=attempt,
                                    header={"model": header_model, "params": params, "prompts": prompts})
        # Videos planned before frame batches were recorded ran with 1: their chunks keep it.
        video = VideoRun(info, spec, prompts, num_frames, entry.get("part_frames") or PART_FRAMES,
                         ctx.settings.decoder, int(entry.get("frame_batch") or 1), tuple(spec.objects),
                         tuple(spec.exemplars))
        back_frames, back_chunks = int(entry.get("backward_frames") or 0), int(entry.get("backward_chunks") or 0)
        should_stop = stop_check(ctx, job_id, video_id, attempt, deadline=soft_deadline(self))
        chunk = Chunk(k, start, stop, final)
        try:
            if backward:
                # Damage fails a video of several chunks (ChunkInputs.damaged_is_error), as forwards.
                strict = int(entry.get("chunks_total") or 0) - back_chunks > 1
                run_backward(video, chunk, loaded, ctx.storage, work, strict,
                             progress_reporter(ctx, job_id, video_id, attempt), should_stop, alone,
                             ctx.settings.max_batch)
            else:
                result = run_chunk(video, chunk, loaded, ctx.storage, work,
                                   progress_reporter(ctx, job_id, video_id, attempt, offset=back_frames),
                                   should_stop, alone, ctx.settings.max_batch)
        except OutOfMemory as err:
            if err.alone:
                raise OutOfMemory(f"{name} ran out of GPU memory even with the engine to itself: {err}", True) from err
            return err  # beside other streams: run again alone (below), not counted
        if backward:
            ctx.status.update_video(job_id, video_id, fence=attempt, frames_done=back_frames - (start - spec.start_frame),
                                    chunks_done=back_chunks - k)
            return None
        warnings = result.warnings if result else []
        ctx.status.update_video(job_id, video_id, fence=attempt,
                                frames_done=back_frames + min(stop - spec.start_frame, num_frames),
                                chunks_done=back_chunks + k + 1,
                                warnings=merged_warnings(entry.get("warnings") or [], warnings))

    def uncount() -> None:
        """The outage stopped this start before the chunk was done: it will start again, once."""
        try:
            done = ctx.storage.exists(marker)
        except OUTAGES:
            done = False
        if not done:
            ctx.status.count_delivery(job_id, video_id, delivery_key, by=-1)

    out_of_memory = guarded(self, ctx, job_id, video_id, attempt, name, step, uncount)
    if out_of_memory is not None:
        log.warning("%s of %s/%s: %s; running it again with the engine to itself", name, job_id, video_id,
                    out_of_memory)
        uncount()
        raise self.retry(kwargs={**(self.request.kwargs or {}), "alone": True}, countdown=0,
                         max_retries=(self.request.retries or 0) + 1)


@shared_task(name=FINALIZE, bind=True, base=VideoTask)
def finalize_task(self, job_id: str, video_id: str, planned_chunks: int, attempt: int = 0) -> None:
    """Step 3, finalize: join the chunks' outputs, mux the audio, record the video's outputs."""
    from workers.chunks.video_steps import finalize
    from workers.media.probe import probe

    ctx = task_context(self)
    started(self, ctx, job_id, video_id, attempt)
    keys = VideoKeys(job_id, video_id)

    def claim() -> None:
        """Under the attempt's fence, in one step with the cancel check: publish, or publish nothing."""
        if not ctx.status.claim_publishing(job_id, video_id, attempt):
            # Cancelled (or moved on) while it joined the parts: no outputs; the work files go only
            # if no retry's new attempt may be writing there already (not_wanted).
            raise Cancelled("stopped before publishing its outputs: its video is no longer wanted")

    def step():
        entry = ctx.status.video(job_id, video_id)
        info = probe(local_source(ctx.storage, ctx.settings, entry["source"], job_id, video_id))
        final = finalize(info, entry["header"], ctx.storage, keys.work, planned_chunks, ctx.storage, keys.prefix,
                         entry.get("part_frames") or PART_FRAMES, claim)
        finish_video(ctx, job_id, video_id, attempt, status="succeeded", outputs=final.outputs,
                     num_frames=final.num_frames, num_objects=final.num_objects,
                     frames_done=int(entry.get("backward_frames") or 0) + final.num_frames,
                     objects_by_prompt=final.objects_by_prompt, thumbnails=final.thumbnails)

    guarded(self, ctx, job_id, video_id, attempt, "finalize", step)
    # After the video is recorded: a retried finalize must still find the chunks if recording failed.
    # Cleaning up is part of the task: if it cannot finish (storage away), the task runs again, and a
    # redelivered finalize of a video that succeeded removes work/ (not_wanted).
    try:
        drop_finished_work(ctx, job_id, video_id, attempt)
    except OUTAGES as err:
        retry_later(self, ctx, err, None)


@shared_task(name=CLOSE_CANCELLED, bind=True)
def close_cancelled_task(self, job_id: str) -> None:
    """A cancelled job's end: results.jsonl, work/ removed, its records set to expire."""
    ctx = task_context(self)
    try:
        close_cancelled(ctx, job_id)
    except OUTAGES as err:
        retry_later(self, ctx, err, None)


