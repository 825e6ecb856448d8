"""Celery task bodies: probe (cpu) -> segment_chunk x N (gpu) -> finalize (cpu), per video.

Each task is idempotent: the same inputs give the same storage keys, and a redelivered task that
finds its work done returns. A chunk that keeps killing its worker fails its video after
``max_redeliveries`` deliveries instead of looping. Input errors fail only their video. A retried
video runs under a new attempt number; tasks of an earlier attempt stop at their next step.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from celery import chain
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from celery.signals import worker_process_init

from pipeline.core.celery_app import FINALIZE, PROBE, SEGMENT_CHUNK, make_app, queue_for
from pipeline.core.planning import SEGMENT_FRAMES, Chunk, default_chunk_frames, frames_to_process, plan_chunks
from pipeline.core.errors import InputError, Sam3vError
from pipeline.control import schedules
from pipeline.core.redis_conn import connect
from pipeline.core.settings import Settings, get_settings
from pipeline.core.status import TERMINAL, StatusStore
from pipeline.core.storage import Storage, open_storage
from workers.probe import VideoInfo, probe
from workers.sources import drop_cached, local_source, stage_source

log = logging.getLogger(__name__)
settings = get_settings()
app = make_app(settings)
if settings.effective_redis_url:
    schedules.configure(app, settings.effective_redis_url)


@dataclass
class Context:
    settings: Settings
    status: StatusStore
    storage: Storage


@lru_cache(maxsize=1)
def context() -> Context:
    s = get_settings()
    return Context(s, StatusStore(connect(s)), open_storage(s.storage_url))


@lru_cache(maxsize=1)
def model():
    """Loaded once per worker process (see worker_process_init), never in the parent."""
    from workers.model import load_model

    s = context().settings
    return load_model(s.model, s.device)


@worker_process_init.connect
def _warm_up_child(**_kwargs) -> None:
    # First imports (transformers, scipy) and the storage client's first build (boto3 reads its
    # service models from disk) count against no task's time limit this way: on a busy host they
    # took longer than a finalize's soft limit, before the task could fail its video cleanly.
    import workers.chunk_runner  # noqa: F401
    import workers.segment  # noqa: F401
    import workers.finalize  # noqa: F401

    try:
        context()
    except Exception as err:  # not reachable yet: the first task builds it (and retries if it must)
        log.warning("worker context: %s", err)
    if os.environ.get("SAM3V_PRELOAD_MODEL") == "1":
        model()


def task_context(task) -> Context:
    """``context()`` inside a task; if Redis or storage cannot be reached the video is not at fault:
    the task runs again later instead of leaving its video unfinished."""
    try:
        return context()
    except Exception as err:
        log.warning("%s: cannot reach Redis or storage (%s); retrying", task.name, err)
        raise task.retry(exc=err, countdown=5, max_retries=10) from None


def video_prefix(job_id: str, video_id: str) -> str:
    return f"{job_id}/{video_id}"


def work_prefix(job_id: str, video_id: str) -> str:
    return f"{job_id}/{video_id}/work"


# --- frames --------------------------------------------------------------------------------------

def count_frames(path: Path) -> int:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-count_packets",
                          "-show_entries", "stream=nb_read_packets", "-of", "csv=p=0", f"file:{path}"],
                         capture_output=True, text=True, timeout=600)
    try:
        return int(out.stdout.strip().split(",")[0])
    except ValueError:
        raise InputError(f"{path.name}: cannot count its frames") from None


# --- state changes ----------------------------------------------------------------------------

def finish_video(ctx: Context, job_id: str, video_id: str, **fields) -> None:
    fields.setdefault("finished", time.time())
    drop_cached(job_id, video_id)
    if ctx.status.update_video(job_id, video_id, **fields):
        write_results(ctx, job_id)


def fail_video(ctx: Context, job_id: str, video_id: str, message: str) -> None:
    log.warning("job %s video %s failed: %s", job_id, video_id, message)
    finish_video(ctx, job_id, video_id, status="failed", error=message)


def write_results(ctx: Context, job_id: str) -> None:
    """The job's results.jsonl: one line a video, written once, when the last video ends."""
    doc = ctx.status.status_document(job_id)
    lines = [json.dumps({"id": v["id"], "state": v["status"], "error": v.get("error"),
                         "outputs": v.get("outputs") or {}}) for v in doc["videos"]]
    ctx.storage.put_bytes(("\n".join(lines) + "\n").encode(), f"{job_id}/results.jsonl")
    ctx.status.event(job_id, "job_completed", {"status": doc["status"], "counts": doc["counts"]})


def _attempt(entry: dict) -> int:
    return int(entry.get("attempt") or 0)


def _stop_if_not_wanted(ctx: Context, job_id: str, video_id: str, attempt: int) -> None:
    entry = ctx.status.video(job_id, video_id)
    if _attempt(entry) != attempt:
        raise Ignore()  # a task of an earlier attempt: the video was retried since
    if ctx.status.is_cancelled(job_id) or entry.get("status") in TERMINAL:
        drop_cached(job_id, video_id)  # cancelled or ended: nothing on this host will read it again
        raise Ignore()


# --- tasks ------------------------------------------------------------------------------------

class VideoTask(app.Task):
    """A task about one video (args: job_id, video_id, ...). Whatever escapes its body (a time
    limit hit outside its own handlers, a bug) fails that video with the reason, so no video is
    left unfinished and its job open forever."""

    def on_failure(self, exc, task_id, args, kwargs, einfo) -> None:
        job_id, video_id = args[0], args[1]
        try:
            ctx = context()
            if _attempt(ctx.status.video(job_id, video_id)) != (kwargs or {}).get("attempt", 0):
                return  # an earlier attempt's task: the video was retried since, and is not this task's
            fail_video(ctx, job_id, video_id, f"internal error in {self.name}: {type(exc).__name__}: {exc}")
        except Exception:
            log.exception("%s: could not record the failure of %s/%s", self.name, job_id, video_id)


@app.task(name=PROBE, bind=True, base=VideoTask)
def probe_task(self, job_id: str, video_id: str, attempt: int = 0) -> None:
    ctx = task_context(self)
    _stop_if_not_wanted(ctx, job_id, video_id, attempt)
    item = ctx.status.item(job_id, video_id)
    ctx.status.update_video(job_id, video_id, status="processing", started=time.time())
    try:
        source = stage_source(ctx.storage, ctx.settings, job_id, video_id, item)
        info = probe(local_source(ctx.storage, ctx.settings, source, job_id, video_id))
        expected = info.frames_expected or count_frames(Path(info.path))
        if expected < 1:
            raise InputError(f"{item['video']}: no video frames")
        start_frame = item.get("start_frame") or 0
        num_frames = frames_to_process(expected, start_frame, item.get("max_frames"), item["video"])
        size = item.get("chunk_frames") or default_chunk_frames(info.fps, ctx.settings.chunk_seconds)
        chunks = plan_chunks(num_frames, size, start_frame)
    except Sam3vError as err:
        fail_video(ctx, job_id, video_id, str(err))
        raise Ignore() from None
    ctx.status.update_video(job_id, video_id, source=source, frames_total=num_frames, frames_done=0,
                            chunks_total=len(chunks), chunks_done=0)
    lane = ctx.status.job_spec(job_id).get("lane", "batch")
    gpu, cpu = queue_for("gpu", lane), queue_for("cpu", lane)
    steps = [segment_chunk_task.si(job_id, video_id, c.index, c.start, c.stop, c.final, num_frames,
                                   attempt=attempt).set(queue=gpu) for c in chunks]
    chain(*steps, finalize_task.si(job_id, video_id, len(chunks), attempt=attempt).set(queue=cpu)).apply_async()


def _item_options(item: dict):
    from workers.segment import SegmentOptions

    return SegmentOptions(prompts=item["prompts"], apply_mask=item.get("apply_mask", True),
                          outputs=tuple(item["outputs"]) if item.get("outputs") else None,
                          max_frames=item.get("max_frames"), chunk_frames=item.get("chunk_frames"),
                          mask_opacity=item.get("mask_opacity", 0.5), start_frame=item.get("start_frame") or 0,
                          detection_threshold=item.get("detection_threshold"))


@app.task(name=SEGMENT_CHUNK, bind=True, base=VideoTask)
def segment_chunk_task(self, job_id: str, video_id: str, k: int, start: int, stop: int, final: bool,
                       num_frames: int, attempt: int = 0) -> None:
    from workers.chunk_runner import ChunkJob, chunk_key, segment_chunk
    from workers.segment import document_header
    from workers.tracker import check_prompts

    ctx = task_context(self)
    _stop_if_not_wanted(ctx, job_id, video_id, attempt)
    deliveries = ctx.status.count_delivery(job_id, video_id, k)
    if deliveries > ctx.settings.max_redeliveries:
        fail_video(ctx, job_id, video_id, f"chunk {k} (frames {start}-{stop - 1}) was started {deliveries - 1} "
                                          "times and never finished: it kills its worker (out of memory?)")
        raise Ignore()
    work = work_prefix(job_id, video_id)
    if ctx.storage.exists(chunk_key(work, k, "done.json")):
        return  # redelivered after it finished: the outputs are there already
    if k > 0 and json.loads(ctx.storage.get_bytes(chunk_key(work, k - 1, "done.json"))).get("ended"):
        return  # the stream ended early (truncated file): nothing left for this chunk
    entry = ctx.status.video(job_id, video_id)
    item = ctx.status.item(job_id, video_id)
    try:
        loaded = model()
        opts = _item_options(item)
        opts.validate()
        prompts = check_prompts(loaded.tokenizer, opts.prompts)
        info = probe(local_source(ctx.storage, ctx.settings, entry["source"], job_id, video_id))
        job = ChunkJob(info, Chunk(k, start, stop, final), num_frames, prompts, opts.video_outputs(),
                       opts.mask_opacity, opts.encoder, SEGMENT_FRAMES, opts.start_frame, opts.detection_threshold)
        if k == 0:
            header_model, params = document_header(loaded, opts, prompts)
            ctx.status.update_video(job_id, video_id, header={"model": header_model, "params": params,
                                                              "prompts": prompts})
        last_report = [0.0]

        def progress(done: int) -> None:
            if time.monotonic() - last_report[0] > 2.0:
                last_report[0] = time.monotonic()
                ctx.status.update_video(job_id, video_id, frames_done=done)

        result = segment_chunk(job, loaded, ctx.storage, work, progress=progress)
    except SoftTimeLimitExceeded:
        fail_video(ctx, job_id, video_id, f"chunk {k} ran past the task time limit ({ctx.settings.task_time_limit} s)")
        raise Ignore() from None
    except Sam3vError as err:
        fail_video(ctx, job_id, video_id, str(err))
        raise Ignore() from None
    except Exception as err:  # a bug or an environment fault: fail this video, keep the worker
        log.exception("chunk %s of %s/%s failed", k, job_id, video_id)
        fail_video(ctx, job_id, video_id, f"internal error in chunk {k}: {type(err).__name__}: {err}")
        raise Ignore() from None
    ctx.status.update_video(job_id, video_id, frames_done=min(stop - opts.start_frame, num_frames), chunks_done=k + 1,
                            warnings=(entry.get("warnings") or []) + result.warnings)


@app.task(name=FINALIZE, bind=True, base=VideoTask)
def finalize_task(self, job_id: str, video_id: str, planned_chunks: int, attempt: int = 0) -> None:
    from workers.chunk_runner import chunk_key
    from workers.finalize import finalize_video

    ctx = task_context(self)
    _stop_if_not_wanted(ctx, job_id, video_id, attempt)
    entry = ctx.status.video(job_id, video_id)
    work = work_prefix(job_id, video_id)
    try:
        chunks = 0
        for k in range(planned_chunks):
            chunks = k + 1
            if json.loads(ctx.storage.get_bytes(chunk_key(work, k, "done.json"))).get("ended"):
                break
        info: VideoInfo = probe(local_source(ctx.storage, ctx.settings, entry["source"], job_id, video_id))
        header = entry["header"]
        videos = [o for o in header["params"]["outputs"] if o != "rle"]
        document, uris, _audio = finalize_video(info, ctx.storage, work, chunks, videos, header["model"],
                                                header["params"], header["prompts"], ctx.storage,
                                                video_prefix(job_id, video_id), SEGMENT_FRAMES)
    except Sam3vError as err:
        fail_video(ctx, job_id, video_id, str(err))
        raise Ignore() from None
    except Exception as err:
        log.exception("finalize of %s/%s failed", job_id, video_id)
        fail_video(ctx, job_id, video_id, f"internal error while finalizing: {type(err).__name__}: {err}")
        raise Ignore() from None
    if not ctx.settings.keep_chunks:
        ctx.storage.delete_prefix(work)
    keys = {name: uri for name, uri in uris.items()}
    finish_video(ctx, job_id, video_id, status="succeeded", outputs=keys,
                 num_frames=document["video"]["num_frames"], num_objects=len(document["objects"]),
                 frames_done=document["video"]["num_frames"])


@app.task(name=schedules.SCHEDULED_SUBMIT, bind=True)
def scheduled_submit_task(self, name: str, manifest: str, prompt: str | None, cron: str | None,
                          every: float | None) -> str:
    """One firing of a schedule: one job, whichever beat or redelivery sent it."""
    from pipeline.control.manifest import load_manifest_bytes
    from pipeline.control.producer import submit_manifest

    ctx = context()
    key = f"schedule:{name}:{schedules.slot(cron, every)}"
    done = submit_manifest(app, ctx.status, load_manifest_bytes(manifest), manifest, name=f"{name} (scheduled)",
                           default_prompt=prompt, idempotency_key=key)
    return done.job_id
