"""Celery tasks: probe (cpu) -> segment_chunk x N (gpu) -> finalize (cpu), per video.

Each task calls exactly one step of ``workers.video_steps`` and records its outcome in the status
store. Tasks are registered with ``shared_task``: no Celery app is built when this module is
imported; the entry point builds one from its settings (``workers.runtime.worker_app``).

Each task is idempotent: the same inputs give the same storage keys, and a redelivered task that
finds its work done returns. A chunk that keeps killing its worker fails its video after
``max_redeliveries`` deliveries instead of looping. Input errors fail only their video. A retried
video runs under a new attempt number; tasks of an earlier attempt stop at their next step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from celery import Task, chain, shared_task
from celery.exceptions import Ignore, SoftTimeLimitExceeded

from pipeline.control import schedules
from pipeline.core.celery_app import FINALIZE, PROBE, SEGMENT_CHUNK, queue_for
from pipeline.core.errors import Sam3vError
from pipeline.core.layout import VideoKeys
from pipeline.core.planning import PART_FRAMES, Chunk
from pipeline.core.specs import VideoSpec
from workers.runtime import Context, context, model
from workers.sources import local_source, stage_source
from workers.video_state import attempt_of, fail_video, finish_video, stop_if_not_wanted

log = logging.getLogger(__name__)


def task_context(task: Task) -> Context:
    """``context()`` inside a task; if Redis or storage cannot be reached the video is not at fault:
    the task runs again later instead of leaving its video unfinished."""
    try:
        return context()
    except Exception as err:
        log.warning("%s: cannot reach Redis or storage (%s); retrying", task.name, err)
        raise task.retry(exc=err, countdown=5, max_retries=10) from None


class VideoTask(Task):
    """A task about one video (args: job_id, video_id, ...). Whatever escapes its body (a time
    limit hit outside its own handlers, a bug) fails that video with the reason, so no video is
    left unfinished and its job open forever."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        job_id, video_id = args[0], args[1]
        try:
            ctx = context()
            if attempt_of(ctx.status.video(job_id, video_id)) != (kwargs or {}).get("attempt", 0):
                return  # an earlier attempt's task: the video was retried since, and is not this task's
            fail_video(ctx, job_id, video_id, f"internal error in {self.name}: {type(exc).__name__}: {exc}")
        except Exception:
            log.exception("%s: could not record the failure of %s/%s", self.name, job_id, video_id)


def _guarded(ctx: Context, job_id: str, video_id: str, what: str, step: Callable):
    """Run ``step``; an error fails this video (with a message for the user) and keeps the worker."""
    try:
        return step()
    except SoftTimeLimitExceeded:
        fail_video(ctx, job_id, video_id, f"{what} ran past the task time limit ({ctx.settings.task_time_limit} s)")
    except Sam3vError as err:
        fail_video(ctx, job_id, video_id, str(err))
    except Exception as err:  # a bug or an environment fault: fail this video, keep the worker
        log.exception("%s of %s/%s failed", what, job_id, video_id)
        fail_video(ctx, job_id, video_id, f"internal error in {what}: {type(err).__name__}: {err}")
    raise Ignore()


def _spec(ctx: Context, job_id: str, video_id: str) -> VideoSpec:
    return VideoSpec.model_validate(ctx.status.item(job_id, video_id))


@shared_task(name=PROBE, bind=True, base=VideoTask)
def probe_task(self, job_id: str, video_id: str, attempt: int = 0) -> None:
    """Step 1, prepare: stage and probe the source, plan the chunks, start the video's chain."""
    from workers.video_steps import prepare

    ctx = task_context(self)
    stop_if_not_wanted(ctx, job_id, video_id, attempt)
    spec = _spec(ctx, job_id, video_id)
    ctx.status.update_video(job_id, video_id, status="processing", started=time.time())

    def step():
        source = stage_source(ctx.storage, ctx.settings, job_id, video_id, {"video": spec.video})
        path = local_source(ctx.storage, ctx.settings, source, job_id, video_id)
        return source, prepare(path, spec, spec.video, ctx.settings.chunk_seconds)

    source, plan = _guarded(ctx, job_id, video_id, "probe", step)
    ctx.status.update_video(job_id, video_id, source=source, frames_total=plan.num_frames, frames_done=0,
                            chunks_total=len(plan.chunks), chunks_done=0, part_frames=ctx.settings.part_frames)
    lane = ctx.status.job_spec(job_id).get("lane", "batch")
    gpu, cpu = queue_for("gpu", lane), queue_for("cpu", lane)
    steps = [segment_chunk_task.si(job_id, video_id, c.index, c.start, c.stop, c.final, plan.num_frames,
                                   attempt=attempt).set(queue=gpu) for c in plan.chunks]
    chain(*steps, finalize_task.si(job_id, video_id, len(plan.chunks), attempt=attempt).set(queue=cpu)).apply_async()


def _progress(ctx: Context, job_id: str, video_id: str) -> Callable[[int], None]:
    """Frames done, written at most every 2 s."""
    last_report = [0.0]

    def report(done: int) -> None:
        if time.monotonic() - last_report[0] > 2.0:
            last_report[0] = time.monotonic()
            ctx.status.update_video(job_id, video_id, frames_done=done)

    return report


@shared_task(name=SEGMENT_CHUNK, bind=True, base=VideoTask)
def segment_chunk_task(self, job_id: str, video_id: str, k: int, start: int, stop: int, final: bool,
                       num_frames: int, attempt: int = 0) -> None:
    """Step 2, run chunk k: frames [start, stop), tracker memory carried in from chunk k-1."""
    from workers.probe import probe
    from workers.tracker import check_prompts
    from workers.video_steps import VideoRun, chunk_needed, document_header, run_chunk

    ctx = task_context(self)
    stop_if_not_wanted(ctx, job_id, video_id, attempt)
    deliveries = ctx.status.count_delivery(job_id, video_id, k)
    if deliveries > ctx.settings.max_redeliveries:
        fail_video(ctx, job_id, video_id, f"chunk {k} (frames {start}-{stop - 1}) was started {deliveries - 1} "
                                          "times and never finished: it kills its worker (out of memory?)")
        raise Ignore()
    work = VideoKeys(job_id, video_id).work
    if not chunk_needed(ctx.storage, work, k):
        return
    entry = ctx.status.video(job_id, video_id)
    spec = _spec(ctx, job_id, video_id)

    def step():
        loaded = model()
        prompts = check_prompts(loaded.tokenizer, spec.prompts)
        info = probe(local_source(ctx.storage, ctx.settings, entry["source"], job_id, video_id))
        if k == 0:
            header_model, params = document_header(loaded, spec, prompts)
            ctx.status.update_video(job_id, video_id, header={"model": header_model, "params": params,
                                                              "prompts": prompts})
        video = VideoRun(info, spec, prompts, num_frames, entry.get("part_frames") or PART_FRAMES,
                         ctx.settings.decoder)
        return run_chunk(video, Chunk(k, start, stop, final), loaded, ctx.storage, work,
                         _progress(ctx, job_id, video_id))

    result = _guarded(ctx, job_id, video_id, f"chunk {k}", step)
    warnings = result.warnings if result else []
    ctx.status.update_video(job_id, video_id, frames_done=min(stop - spec.start_frame, num_frames),
                            chunks_done=k + 1, warnings=(entry.get("warnings") or []) + warnings)


@shared_task(name=FINALIZE, bind=True, base=VideoTask)
def finalize_task(self, job_id: str, video_id: str, planned_chunks: int, attempt: int = 0) -> None:
    """Step 3, finalize: join the chunks' outputs, mux the audio, record the video's outputs."""
    from workers.probe import probe
    from workers.video_steps import finalize

    ctx = task_context(self)
    stop_if_not_wanted(ctx, job_id, video_id, attempt)
    entry = ctx.status.video(job_id, video_id)
    keys = VideoKeys(job_id, video_id)

    def step():
        info = probe(local_source(ctx.storage, ctx.settings, entry["source"], job_id, video_id))
        return finalize(info, entry["header"], ctx.storage, keys.work, planned_chunks, ctx.storage, keys.prefix,
                        entry.get("part_frames") or PART_FRAMES)

    final = _guarded(ctx, job_id, video_id, "finalize", step)
    if not ctx.settings.keep_chunks:
        ctx.storage.delete_prefix(keys.work_prefix)
    finish_video(ctx, job_id, video_id, status="succeeded", outputs=final.outputs, num_frames=final.num_frames,
                 num_objects=final.num_objects, frames_done=final.num_frames)


@shared_task(name=schedules.SCHEDULED_SUBMIT, bind=True)
def scheduled_submit_task(self, name: str, manifest: str, prompt: str | None, cron: str | None,
                          every: float | None) -> str:
    """One firing of a schedule: one job, whichever beat or redelivery sent it."""
    return schedules.fire(self.app, context().status, name, manifest, prompt, cron, every)
