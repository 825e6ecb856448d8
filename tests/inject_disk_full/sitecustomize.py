"""Loaded (through PYTHONPATH) by one test's GPU worker only: its first upload of a chunk's parts
raises "No space left on device", once per ``SAM3V_TEST_DISK_FULL_MARK`` file, as a full local disk
would while the chunk's encoded part is written. Nothing here is imported by sam3v itself."""

import os

if os.environ.get("SAM3V_TEST_DISK_FULL_MARK"):
    import errno
    from pathlib import Path

    from pipeline.core.storage.s3 import S3Storage

    _mark = Path(os.environ["SAM3V_TEST_DISK_FULL_MARK"])
    _put_file = S3Storage.put_file

    def put_file(self, local_path, key):
        if "/work/" in key and not _mark.exists():
            _mark.write_text(key)
            raise OSError(errno.ENOSPC, "No space left on device (injected by a test)", str(local_path))
        return _put_file(self, local_path, key)

    S3Storage.put_file = put_file
