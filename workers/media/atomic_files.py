"""Atomic file writes: a file appears whole under its final name, or not at all.

The content goes to a temporary file next to the target, is fsynced, then moved over the target
with ``os.replace``: a reader, or a worker killed mid-write and run again, never sees a partial file.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def _temp_path(path: Path) -> Path:
    # In the target's directory: os.replace is atomic only within one filesystem.
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def write_atomically(path: Path, write: Callable[[Path], T]) -> T:
    """``write(tmp)``, then fsync and move ``tmp`` to ``path``; returns what ``write`` returned.

    ``write`` may read back what it wrote (a digest) before the file is published.
    """
    tmp = _temp_path(path)
    try:
        result = write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def write_bytes_atomically(path: Path, data: bytes) -> None:
    write_atomically(path, lambda tmp: tmp.write_bytes(data))
