"""Where results go. One small interface (``Storage``), interchangeable backends."""

from pipeline.storage.base import Storage
from pipeline.storage.local import LocalStorage


def open_storage(url: str) -> Storage:
    """A local directory now; ``s3://bucket/prefix`` arrives with the distributed pipeline."""
    if "://" in url and not url.startswith("file://"):
        scheme = url.split("://", 1)[0]
        raise ValueError(f"storage URL {url!r}: scheme {scheme!r} is not supported yet (use a local directory)")
    return LocalStorage(url.removeprefix("file://"))


__all__ = ["Storage", "LocalStorage", "open_storage"]
