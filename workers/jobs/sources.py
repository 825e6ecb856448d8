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
from pipeline.core.uris import Scheme, parse_uri, storage_uri
from pipeline.core.urls import fetch_url


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


def job_allows_local(job_id: str) -> bool:
    """Whether ``job_id`` was submitted with local paths allowed (embedded ``sam3v run``), as this
    worker's status store recorded it."""
    from workers.jobs.context import context

    return bool(context().status.job_spec(job_id).get("allow_local"))


def stage_source(storage: Storage, settings: Settings, job_id: str, video_id: str, item: dict,
                 allow_local: bool | None = None) -> str:
    """Where workers read the video from: a storage key (URL inputs are fetched once and staged
    there, so every chunk reads the same bytes), an s3:// URI, or a local path. ``allow_local``:
    whether the job may name local paths; None: as the job was submitted (``job_allows_local``).
    A local path of a job that may not is an InputError naming it: with a shared working
    directory it would reach any file the worker can read."""
    video = item["video"]
    uri = parse_uri(video)  # BadUri is an InputError: the video fails, naming its input
    if uri.is_local:
        if not (job_allows_local(job_id) if allow_local is None else allow_local):
            raise InputError(f"{video}: local paths are read only in embedded mode (sam3v run); "
                             "use s3://, http:// or https://")
        return uri.path
    if uri.scheme is Scheme.UPLOAD:  # the API resolves an upload to its key before it queues
        raise InputError(f"{video}: an upload id is not a source (the API names its storage key)")
    if uri.scheme not in (Scheme.HTTP, Scheme.HTTPS):
        return uri.text
    key = VideoKeys(job_id, video_id).source
    if not storage.exists(key):
        evict_stale(settings)
        tmp = cached_path(settings, job_id, video_id, "download")
        try:
            fetch_url(uri.text, tmp, settings.url_allowlist, settings.url_max_bytes, settings.url_timeout)
            storage.put_file(tmp, key)
            # This host's copy of the staged key: the probe reads it next, not storage again.
            os.replace(tmp, cached_path(settings, job_id, video_id, key))
        finally:
            tmp.unlink(missing_ok=True)
    return storage_uri(key)


def local_source(storage: Storage, settings: Settings, source: str, job_id: str, video_id: str) -> Path:
    """A local file for ``source`` (what ``stage_source`` answered): this host's copy, fetched on
    first use. A local path is only ever a source of a job that allowed it (``stage_source``)."""
    uri = parse_uri(source)
    if uri.is_local:
        return Path(uri.path)
    if uri.scheme not in (Scheme.STORAGE, Scheme.S3):
        raise InputError(f"{source}: not a source a worker reads (storage:, s3:// or a local path)")
    name = uri.key if uri.scheme is Scheme.STORAGE else f"{uri.bucket}/{uri.key}"
    target = cached_path(settings, job_id, video_id, name)
    if target.exists():
        os.utime(target)  # in use: not stale
        return target
    evict_stale(settings)
    if uri.scheme is Scheme.STORAGE:
        try:
            storage.get_file(uri.key, target)
        except MissingKey as err:  # an upload past its TTL, a staged copy cleaned up
            raise InputError(f"the input is no longer in storage: {err}") from None
        return target
    try:
        open_storage(f"s3://{uri.bucket}").get_file(uri.key, target)
    except MissingKey as err:
        raise InputError(str(err)) from None
    except Exception as err:
        raise InputError(f"{source}: cannot read it from S3 ({err})") from err
    return target
