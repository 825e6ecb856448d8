"""Where results go. One small interface (``Storage``), interchangeable backends."""

from pipeline.core.storage.base import MissingKey, Storage, StorageUnavailable, join_key
from pipeline.core.storage.local import LocalStorage
from pipeline.core.uris import Scheme, parse_uri


def open_storage(url: str) -> Storage:
    """``s3://bucket/prefix`` (boto3's standard credential chain; AWS_ENDPOINT_URL for MinIO and
    friends) or a local directory (a path or a file:// URI). ValueError for anything else."""
    uri = parse_uri(url, s3_prefix=True)
    if uri.scheme is Scheme.S3:
        from pipeline.core.storage.s3 import S3Storage

        return S3Storage(uri.bucket, uri.key)
    if not uri.is_local:
        raise ValueError(f"storage URL {url!r}: scheme {uri.scheme.value!r} is not supported "
                         "(s3:// or a local directory)")
    return LocalStorage(uri.path)


__all__ = ["MissingKey", "Storage", "StorageUnavailable", "LocalStorage", "join_key", "open_storage"]
