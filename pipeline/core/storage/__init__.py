"""Where results go. One small interface (``Storage``), interchangeable backends."""

from pipeline.core.storage.base import MissingKey, Storage, join_key
from pipeline.core.storage.local import LocalStorage


def open_storage(url: str) -> Storage:
    """``s3://bucket/prefix`` (boto3's standard credential chain; AWS_ENDPOINT_URL for MinIO and
    friends) or a local directory."""
    if url.startswith("s3://"):
        from pipeline.core.storage.s3 import S3Storage

        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        return S3Storage(bucket, prefix)
    if "://" in url and not url.startswith("file://"):
        scheme = url.split("://", 1)[0]
        raise ValueError(f"storage URL {url!r}: scheme {scheme!r} is not supported (s3:// or a local directory)")
    return LocalStorage(url.removeprefix("file://"))


__all__ = ["MissingKey", "Storage", "LocalStorage", "join_key", "open_storage"]
