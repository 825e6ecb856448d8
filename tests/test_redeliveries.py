"""A chunk that keeps killing its worker fails its video after SAM3V_MAX_REDELIVERIES deliveries.

The task body is called directly (a plain function call, not eager Celery), against the embedded
in-process Redis, with the delivery count already at the limit: what a worker sees when the same
chunk arrives for the fourth time after three crashes.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def running_video(monkeypatch, tmp_path):
    """The embedded context (in-process Redis, storage in tmp_path) with job ``job1`` whose one
    video ``v`` is processing; yields (tasks module, context)."""
    monkeypatch.delenv("SAM3V_BROKER_URL", raising=False)
    monkeypatch.delenv("SAM3V_REDIS_URL", raising=False)
    monkeypatch.setenv("SAM3V_STORAGE_URL", str(tmp_path))
    from pipeline.core.settings import Settings
    from workers.jobs import context as runtime
    from workers.jobs import tasks
    from workers.jobs.app import worker_app

    worker_app(Settings())
    ctx = runtime.context()
    item = {"id": "v", "video": "x.mp4", "prompts": ["dog"], "line": 1}
    ctx.status.create_job("job1", "t", {}, [item], [])
    ctx.status.update_video("job1", "v", status="processing", source="x.mp4")
    yield tasks, ctx
    runtime.context.cache_clear()


def test_chunk_past_the_redelivery_limit_fails_its_video(running_video, tmp_path):
    tasks, ctx = running_video
    for _ in range(ctx.settings.max_redeliveries):
        ctx.status.count_delivery("job1", "v", 2)
    # The task ends FAILURE (Flower shows the failed video's task failed), not ignored.
    with pytest.raises(tasks.VideoFailed, match="never finished"):
        tasks.segment_chunk_task(job_id="job1", video_id="v", k=2, start=20, stop=30, final=False, num_frames=40)
    video = ctx.status.video("job1", "v")
    assert video["status"] == "failed"
    assert "chunk 2" in video["error"] and "never finished" in video["error"]
    doc = ctx.status.status_document("job1")
    assert doc["status"] == "failed"
    assert (tmp_path / "job1" / "results.jsonl").is_file()


def test_an_exception_escaping_a_task_fails_its_video(running_video):
    """The safety net (VideoTask.on_failure, what Celery calls when a body raises): a time limit
    hit before the body's own handlers must not leave the video unfinished and its job open."""
    from billiard.exceptions import SoftTimeLimitExceeded

    tasks, ctx = running_video
    tasks.finalize_task.on_failure(SoftTimeLimitExceeded(), "task-id", ("job1", "v", 3), {}, None)
    video = ctx.status.video("job1", "v")
    assert video["status"] == "failed" and "sam3v.finalize" in video["error"]
    assert "SoftTimeLimitExceeded" in video["error"]
    assert ctx.status.status_document("job1")["status"] == "failed"
