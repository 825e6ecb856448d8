"""Checks a worker runs at start, before it takes any task: each failure is one line naming the
setting at fault (``InputError``, exit 2), instead of a worker that starts and then fails every
video it is given (a missing bucket, a queue name nobody sends to, no process to run anything)."""

from __future__ import annotations

import uuid

import redis

from pipeline.core.celery_app import ALL_QUEUES
from pipeline.core.errors import InputError
from pipeline.core.settings import Settings

PROBE_PREFIX = ".sam3v-preflight"
REDIS_TIMEOUT_S = 5.0


def parse_queues(text: str) -> list[str]:
    """``--queues``: known names only, read interactive first whatever order they were given in."""
    names = [q.strip() for q in text.split(",") if q.strip()]
    if not names:
        raise InputError(f"--queues {text!r}: give at least one of {', '.join(ALL_QUEUES)}")
    unknown = [q for q in names if q not in ALL_QUEUES]
    if unknown:
        raise InputError(f"--queues: unknown queue {unknown[0]!r} (known: {', '.join(ALL_QUEUES)})")
    return [q for q in ALL_QUEUES if q in names]


def check_concurrency(concurrency: int) -> None:
    if concurrency < 1:
        raise InputError(f"--concurrency {concurrency}: must be 1 or more (processes that run tasks)")


def _redis_settings(settings: Settings) -> list[tuple[str, str]]:
    """(setting name, URL) of every Redis this process needs."""
    found = []
    if settings.broker_url and settings.broker_url.startswith(("redis://", "rediss://")):
        found.append(("SAM3V_BROKER_URL", settings.broker_url))
    if settings.redis_url and settings.redis_url != settings.broker_url:
        found.append(("SAM3V_REDIS_URL", settings.redis_url))
    return found


def check_redis(settings: Settings) -> None:
    """A PING to each configured Redis, within a few seconds."""
    for name, url in _redis_settings(settings):
        try:
            client = redis.Redis.from_url(url, socket_connect_timeout=REDIS_TIMEOUT_S, socket_timeout=REDIS_TIMEOUT_S)
            client.ping()
            client.close()
        except redis.RedisError as err:
            raise InputError(f"{name}={url}: Redis unreachable ({err})") from None
        except ValueError as err:  # a URL redis-py cannot read
            raise InputError(f"{name}={url}: {err}") from None


def _s3_problem(url: str, bucket: str, err: Exception) -> str:
    from botocore.exceptions import ClientError, NoCredentialsError

    if isinstance(err, ClientError):
        code = err.response.get("Error", {}).get("Code", "")
        if code == "NoSuchBucket":
            return f"bucket {bucket!r} does not exist"
        if code in ("AccessDenied", "403", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            return f"cannot write to bucket {bucket!r} ({code}): check the AWS credentials"
        return f"cannot write to bucket {bucket!r}: {code or err}"
    if isinstance(err, NoCredentialsError):
        return "no AWS credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE / an instance role)"
    from pipeline.core.worker_registry import storage_endpoint

    return f"storage unreachable at {storage_endpoint() or 'the AWS default endpoint'} (AWS_ENDPOINT_URL): {err}"


def check_storage(settings: Settings) -> None:
    """Write a small object under the storage root, then delete it."""
    from pipeline.core.storage import open_storage

    url = settings.storage_url
    try:
        storage = open_storage(url)
    except ValueError as err:
        raise InputError(f"SAM3V_STORAGE_URL={url}: {err}") from None
    probe = f"{PROBE_PREFIX}/{uuid.uuid4().hex}"
    try:
        storage.put_bytes(b"sam3v worker start check", f"{probe}/probe")
        storage.delete_prefix(probe)
    except Exception as err:
        bucket = getattr(storage, "bucket", None)
        if bucket is not None:
            raise InputError(f"SAM3V_STORAGE_URL={url}: {_s3_problem(url, bucket, err)}") from None
        if isinstance(err, OSError):  # a local directory
            raise InputError(f"SAM3V_STORAGE_URL={url}: cannot write there ({err})") from None
        raise


def check_worker_start(settings: Settings, queues: str, concurrency: int) -> list[str]:
    """Everything a worker needs before it consumes anything; returns its queues in reading order."""
    names = parse_queues(queues)
    check_concurrency(concurrency)
    check_redis(settings)
    check_storage(settings)
    return names
