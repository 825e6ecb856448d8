"""Configuration from the environment (prefix ``SAM3V_``), each documented in the README."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from pipeline.core.planning import PART_FRAMES
from pipeline.core.retention import parse_duration
from pipeline.core.specs import DEFAULT_MAX_PROMPTS


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SAM3V_", extra="ignore")

    broker_url: str | None = Field(None, description="Celery broker (redis://... or amqp://...); unset: embedded mode")
    redis_url: str | None = Field(None, description="Redis for the status collector and schedules; default: the broker if it is Redis")
    storage_url: str = Field("./sam3v-data", description="Where results go: s3://bucket/prefix or a local directory")
    model: str = Field("facebook/sam3", description="Model directory (save_pretrained layout) or Hugging Face id")
    device: str = Field("auto", description="auto (cuda when present), cpu or cuda")
    url_allowlist: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Hosts, host:port or CIDRs URL inputs may reach despite the private-address rule")
    chunk_seconds: float = Field(10.0, gt=0, description="Default chunk length in seconds of video")
    task_time_limit: int = Field(1800, gt=0, description="Hard time limit of one task, seconds")
    visibility_timeout: int = Field(3600, gt=0, description="Redis redelivers an unacked task after this; must exceed the time limit")
    restore_interval: float | None = Field(
        None, gt=0, description="How often a worker looks in Redis for tasks left unacked past the visibility timeout "
                                "(their worker died) and puts them back on their queue, seconds; unset: kombu's pace "
                                "(a look about every 100 s)")
    max_redeliveries: int = Field(3, ge=1, description="Deliveries of one chunk before its video fails")
    keep_chunks: bool = Field(False, description="Keep chunk states and segments after finalize")
    url_max_bytes: int = Field(20 * 1024**3, gt=0, description="Largest URL input, bytes")
    url_timeout: float = Field(600.0, gt=0, description="Time limit to download a URL input, seconds")
    cache_max_age: float = Field(7200.0, gt=0, description="Worker-local source copies unused this long are deleted, seconds (never less than the task time limit)")
    torch_threads: int | None = Field(None, ge=1, description="torch CPU threads (same on every worker: CPU results depend on it)")
    decoder: Literal["pyav", "decord"] = Field("pyav", description="Decoder tried first (the other takes over when it cannot read a file)")
    cache: Path = Field(default_factory=lambda: Path.home() / ".cache" / "sam3v",
                        description="Worker-local cache directory (host copies of sources under sources/)")
    part_frames: int = Field(PART_FRAMES, ge=1, description="Frames per encoded part (a keyframe at least this often); recorded per video when it is planned")
    heartbeat_timeout: float = Field(300.0, gt=0, description="A processing video whose task has shown no sign of life this long, with no task queued, is requeued by the sweeper, seconds")
    sweep_interval: float = Field(60.0, gt=0, description="How often one worker looks for lost work (the sweeper), seconds")
    outage_retries: int = Field(20, ge=0, description="Retries of a task that found Redis or storage unreachable, backing off to a minute apart, before its video fails")
    # --- HTTP API (sam3v api) ---------------------------------------------------------------------
    api_sync_timeout: float = Field(600.0, gt=0, description="POST /api/ai/videos/generate answers 504 after this, seconds")
    api_sse_ping: float = Field(15.0, gt=0, description="Seconds between SSE heartbeat comments")
    api_url_expires: int = Field(3600, gt=0, description="Lifetime of presigned result URLs, seconds")
    api_s3_buckets: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="bucket or bucket/prefix entries API callers may name as s3:// inputs (none by default)")
    api_upload_max_bytes: int = Field(2 * 1024**3, gt=0, description="Largest upload to POST /api/ai/uploads, bytes")
    api_upload_ttl: int = Field(7 * 86400, gt=0, description="How long an upload can be named as input_video, seconds")
    api_upload_sweep: float = Field(600.0, gt=0, description="How often the API deletes expired uploads from storage, seconds")
    api_webhook_secret: str | None = Field(None, description="Signs webhook bodies (per-key secrets derive from it); unset: one is made and kept in Redis")
    api_webhook_attempts: int = Field(6, ge=1, description="Deliveries of one webhook before it is given up")
    api_webhook_backoff: float = Field(2.0, gt=0, description="Pause before the second webhook delivery, seconds; doubles each time")
    api_webhook_claim_interval: float = Field(
        60.0, gt=0, description="How often an API process looks for webhook events a dead process took and never "
                                "acknowledged (it takes those idle past the claim time), seconds")
    max_prompts: int = Field(DEFAULT_MAX_PROMPTS, ge=1, description="Most prompts one video may have (a manifest line, an API request, sam3v segment); each costs model time on every frame")
    worker_start_timeout: float = Field(
        300.0, gt=0, description="A worker's new process (after a crash, an OOM kill or --max-tasks-per-child) must be "
                                 "ready within this, seconds (imports, storage client, the model on a GPU queue); "
                                 "one that is not is killed and started again")
    frame_batch: int = Field(
        8, ge=1, le=64, description="Frames per batched detector call within one video (B); fixed for a video when it is "
                                    "planned, so all its chunks share it. 8 is not yet measured on a GPU")
    streams: int | None = Field(
        None, ge=1, le=64, description="Chunks a GPU worker process runs at once around one model (K); unset: 2 with "
                                       "CUDA (not yet measured), 1 on CPU. Above 1 the worker runs a threads pool")
    max_batch: int = Field(16, ge=1, le=256, description="Most frames in one batched detector call across a worker's streams")
    object_batch: bool = Field(
        True, description="Track all objects of a frame that have no new input as one batch per memory layout "
                          "(workers.model.object_batch); false: transformers' loop, one object at a time. Masks do not "
                          "depend on it")

    job_retention: float = Field(
        30 * 86400.0, ge=0, description="A finished job's Redis records (state, videos, counts) expire this long after it "
                                        "ends: seconds or 30d, 12h, 90m; 0 keeps them until `sam3v jobs prune`. Results stay in storage")

    @field_validator("job_retention", mode="before")
    @classmethod
    def _duration(cls, value):
        return parse_duration(value) if isinstance(value, str) else value

    @field_validator("url_allowlist", "api_s3_buckets", mode="before")
    @classmethod
    def _split(cls, value):
        """``a,b,c`` (or a JSON list) -> ["a", "b", "c"]."""
        if isinstance(value, str):
            if value.strip().startswith("["):
                import json

                try:
                    value = json.loads(value)
                except ValueError:
                    raise ValueError("not a JSON list: use comma-separated entries") from None
            else:
                return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, list):
            return [str(v).strip() for v in value if str(v).strip()]
        return value

    @model_validator(mode="after")
    def _check_timeouts(self):
        if self.visibility_timeout <= self.task_time_limit:
            raise ValueError(f"SAM3V_VISIBILITY_TIMEOUT ({self.visibility_timeout}) must exceed "
                             f"SAM3V_TASK_TIME_LIMIT ({self.task_time_limit}), or a running task is delivered twice")
        return self

    @property
    def effective_redis_url(self) -> str | None:
        if self.redis_url:
            return self.redis_url
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return None


def get_settings() -> Settings:
    return Settings()
