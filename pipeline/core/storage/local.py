"""Local-directory storage (embedded mode, `sam3v segment --out DIR`)."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from pipeline.core.storage.base import MissingKey, Storage, check_key


class LocalStorage(Storage):
    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _publish(self, key: str, write) -> str:
        final = self._path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target under a name no reader takes for a result, then rename: atomic
        # on one filesystem, so a crash leaves either the old file or the new one.
        tmp = final.with_name(f".{final.name}.{uuid.uuid4().hex}.partial")
        try:
            write(tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        return self.uri(key)

    def put_file(self, local_path: Path, key: str) -> str:
        return self._publish(key, lambda tmp: shutil.copyfile(local_path, tmp))

    def put_bytes(self, data: bytes, key: str) -> str:
        return self._publish(key, lambda tmp: tmp.write_bytes(data))

    def get_bytes(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise MissingKey(self.uri(key)) from None

    def get_file(self, key: str, local_path: Path) -> Path:
        local_path = Path(local_path)
        local_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = local_path.with_name(f".{local_path.name}.{uuid.uuid4().hex}.partial")
        try:
            shutil.copyfile(self._path(key), tmp)
        except FileNotFoundError:
            raise MissingKey(self.uri(key)) from None
        os.replace(tmp, local_path)
        return local_path

    def list(self, prefix: str) -> list[str]:
        prefix = prefix.strip("/")
        base = self._path(prefix) if prefix else self.root
        if not base.is_dir():
            return []
        return sorted(p.relative_to(self.root).as_posix() for p in base.rglob("*")
                      if p.is_file() and not p.name.endswith(".partial"))

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        if prefix.strip("/"):
            shutil.rmtree(self._path(prefix.strip("/")), ignore_errors=True)
        else:  # the whole storage root, as S3 does: every key, not the directory itself
            for key in keys:
                self._path(key).unlink(missing_ok=True)
        return len(keys)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def uri(self, key: str) -> str:
        return str(self._path(key))
