"""Uploads: a video sent to ``POST /api/ai/uploads`` (multipart) is stored under
``uploads/{id}/{name}`` in the deployment's storage and named in requests as
``input_video: "upload://{id}"``. Only the key that uploaded it can name it, for
SAM3V_API_UPLOAD_TTL seconds: then its record in Redis expires, and the API's sweeper deletes the
object within SAM3V_API_UPLOAD_SWEEP seconds (every API process sweeps; deleting twice is harmless)."""

from __future__ import annotations

import hmac
import logging
import re
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import BinaryIO

import redis

from sam3v.api.errors import APIError
from pipeline.core import layout
from pipeline.core.status import _s

log = logging.getLogger(__name__)
SCHEME = "upload://"
EXPIRY = "sam3v:uploads:expiry"  # sorted set: upload id -> when it expires (unix time)
SWEEP_BATCH = 100
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def upload_key(upload_id: str) -> str:
    return f"sam3v:upload:{upload_id}"


def safe_name(filename: str | None) -> str:
    name = _UNSAFE.sub("-", Path(filename or "").name).strip("-.")[:100]
    return name or "upload"


def store_upload(r: redis.Redis, storage, fileobj: BinaryIO, filename: str | None, owner: str,
                 max_bytes: int, ttl: int) -> dict:
    """Copy the upload to storage (through a local file: storage backends take finished files)."""
    upload_id = uuid.uuid4().hex
    key = layout.upload_key(upload_id, safe_name(filename))
    with tempfile.NamedTemporaryFile(prefix="sam3v-upload-") as tmp:
        size = 0
        while block := fileobj.read(1 << 20):
            size += len(block)
            if size > max_bytes:
                raise APIError(413, "too_large", f"file: larger than {max_bytes} bytes (SAM3V_API_UPLOAD_MAX_BYTES)",
                               field="file")
            tmp.write(block)
        if size == 0:
            raise APIError(422, "invalid_request", "file: empty", field="file")
        tmp.flush()
        storage.put_file(Path(tmp.name), key)
    created = time.time()
    with r.pipeline() as pipe:
        pipe.hset(upload_key(upload_id), mapping={"owner": owner, "key": key, "bytes": size, "created": created,
                                                  "filename": filename or ""})
        pipe.expire(upload_key(upload_id), ttl)
        pipe.zadd(EXPIRY, {upload_id: created + ttl})
        pipe.execute()
    return {"upload_id": upload_id, "input_video": SCHEME + upload_id, "bytes": size, "filename": filename,
            "created_at": int(created), "expires_at": int(created + ttl)}


def resolve_upload(r: redis.Redis, uri: str, owner: str) -> str:
    """The storage key behind ``upload://{id}`` if this owner uploaded it; 422 otherwise (another
    key's upload reads exactly like a missing one)."""
    upload_id = uri[len(SCHEME):].strip("/")
    meta = {_s(k): _s(v) for k, v in r.hgetall(upload_key(upload_id)).items()} if upload_id else {}
    if not meta or not hmac.compare_digest(meta.get("owner", ""), owner):
        raise APIError(422, "invalid_request", f"input_video: no upload {upload_id!r} (it expires "
                       "SAM3V_API_UPLOAD_TTL seconds after it was made)", field="input_video")
    return meta["key"]


def sweep_expired(r: redis.Redis, storage, now: float | None = None) -> int:
    """Delete the stored objects of uploads past their TTL (at most SWEEP_BATCH); returns how many.
    The object goes before the entry, so a crash between the two leaves work for the next sweep,
    never an object nobody will delete."""
    now = time.time() if now is None else now
    swept = 0
    for raw in r.zrangebyscore(EXPIRY, "-inf", now, start=0, num=SWEEP_BATCH):
        upload_id = _s(raw)
        storage.delete_prefix(layout.upload_prefix(upload_id))
        swept += r.zrem(EXPIRY, upload_id)
    return swept


def sweep_forever(r: redis.Redis, storage, every: float, stop: threading.Event) -> None:
    """The API's sweeper thread: expired uploads leave storage within ``every`` seconds."""
    while not stop.wait(every):
        try:
            while sweep_expired(r, storage) == SWEEP_BATCH and not stop.is_set():
                pass
        except Exception as err:  # Redis or storage unreachable for now: the next round tries again
            log.warning("upload sweeper: %s", err)
