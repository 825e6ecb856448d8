"""Where a worker reads a video from, and the host-local copies of sources.

A source is fetched once per worker host and reused by that host's later chunks of the video
(``SAM3V_CACHE/sources``). A copy goes when its video ends on this host, when a task of this host
finds its video cancelled, or when no task on this host has used it for SAM3V_CACHE_MAX_AGE: the
other hosts that ran a chunk of a video never see it end, and a nightly batch would otherwise fill
their disks. Evicting too early costs a download, never a result: a copy is touched at every use.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pipeline.core.errors import InputError
from pipeline.core.layout import VideoKeys
from pipeline.core.settings import Settings
from pipeline.core.storage import MissingKey, Storage, open_storage
from pipeline.core.urls import fetch_url

STORAGE = "storage:"


def cache_dir(settings: Settings) -> Path:
    path = Path(settings.cache).expanduser() / "sources"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_path(settings: Settings, job_id: str, video_id: str, name: str) -> Path:
    return cache_dir(settings) / f"{job_id}__{video_id}__{name.replace('/', '__')}"


def drop_cached(settings: Settings, job_id: str, video_id: str) -> None:
    """Forget this video's local copies (it ended; a retry must read the source afresh)."""
    for stale in cache_dir(settings).glob(f"{job_id}__{video_id}__*"):
        stale.unlink(missing_ok=True)


def eviction_age(settings: Settings) -> float:
    # A task touches its copy when it starts and may read it until its time limit (finalize muxes
    # the source's audio last): a copy younger than that may still be open for reading.
    return max(settings.cache_max_age, float(settings.task_time_limit))


def evict_stale(settings: Settings, now: float | None = None) -> int:
    """Delete copies (and partial downloads of dead processes) unused for ``eviction_age``."""
    cutoff = (time.time() if now is None else now) - eviction_age(settings)
    evicted = 0
    for path in cache_dir(settings).iterdir():
        try:
            if path.is_file() and path.stat().st_mtime < cutoff:
                path.unlink()
                evicted += 1
        except FileNotFoundError:  # another process on this host evicted it first
            pass
    return evicted


def stage_source(storage: Storage, settings: Settings, job_id: str, video_id: str, item: dict) -> str:
    """Where workers read the video from: a storage key (URL inputs are fetched once and staged
    there, so every chunk reads the same bytes), an s3:// URI, or a local path."""
    video = item["video"]
    if video.startswith(("http://", "https://")):
        key = VideoKeys(job_id, video_id).source
        if not storage.exists(key):
            evict_stale(settings)
            tmp = cached_path(settings, job_id, video_id, "download")
            try:
                fetch_url(video, tmp, settings.url_allowlist, settings.url_max_bytes, settings.url_timeout)
                storage.put_file(tmp, key)
                # This host's copy of the staged key: the probe reads it next, not storage again.
                os.replace(tmp, cached_path(settings, job_id, video_id, key))
            finally:
                tmp.unlink(missing_ok=True)
        return STORAGE + key
    return video


def local_source(storage: Storage, settings: Settings, source: str, job_id: str, video_id: str) -> Path:
    """A local file for ``source``: this host's copy, fetched on first use."""
    if not source.startswith((STORAGE, "s3://")):
        return Path(source)
    target = cached_path(settings, job_id, video_id, source.removeprefix(STORAGE).removeprefix("s3://"))
    if target.exists():
        os.utime(target)  # in use: not stale
        return target
    evict_stale(settings)
    if source.startswith(STORAGE):
        try:
            storage.get_file(source.removeprefix(STORAGE), target)
        except MissingKey as err:  # an upload past its TTL, a staged copy cleaned up
            raise InputError(f"the input is no longer in storage: {err}") from None
        return target
    bucket, key = source.removeprefix("s3://").split("/", 1)
    try:
        open_storage(f"s3://{bucket}").get_file(key, target)
    except MissingKey as err:
        raise InputError(str(err)) from None
    except Exception as err:
        raise InputError(f"{source}: cannot read it from S3 ({err})") from err
    return target
