"""The storage interface every backend implements.

Keys are relative, '/'-separated. A key becomes visible only when its content is complete: a
reader never sees a half-written result.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path


class MissingKey(FileNotFoundError):
    """A read of a key that is not there, whichever the backend (S3 answers 404, a directory ENOENT)."""

    def __init__(self, uri: str):
        super().__init__(f"{uri}: no such key")
        self.uri = uri


class StorageUnavailable(ConnectionError):
    """The storage service could not be reached (connection refused, dropped or timed out): nobody's
    input is at fault, and the same call can succeed later."""


class Storage(ABC):
    #: True when ``url`` hands out links a client can fetch directly (presigned S3 URLs); False when
    #: a server must stream the key itself (a local directory).
    presigns: bool = False

    @abstractmethod
    def put_file(self, local_path: Path, key: str) -> str:
        """Store a finished local file under ``key``; returns its URI."""

    @abstractmethod
    def put_bytes(self, data: bytes, key: str) -> str:
        """Store ``data`` under ``key``; returns its URI."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The content of ``key``; ``MissingKey`` when there is none."""

    @abstractmethod
    def get_file(self, key: str, local_path: Path) -> Path:
        """Copy ``key`` to a local file (complete when it appears); ``MissingKey`` when there is none."""

    @abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key under ``prefix`` (relative to the storage root)."""

    @abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every key under ``prefix``; returns how many."""

    def url(self, key: str, expires: int = 3600) -> str:
        """Where a client can fetch ``key``: a presigned URL for S3, the path for local storage."""
        return self.uri(key)

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def uri(self, key: str) -> str: ...


def check_key(key: str) -> str:
    parts = key.split("/")
    if not key or key.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid storage key {key!r}")
    return key


def join_key(prefix: str, key: str) -> str:
    """``prefix/key``, or ``key`` when the prefix is empty."""
    prefix = prefix.strip("/")
    return f"{prefix}/{key}" if prefix else key
