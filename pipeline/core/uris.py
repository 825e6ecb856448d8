"""Where a video, a manifest or storage is: every such string is parsed here, once, into a typed
``Uri`` with a normal form.

Schemes are case-insensitive (RFC 3986): ``S3://b/k`` is ``s3://b/k``. Comparing prefixes
case-sensitively elsewhere let ``S3://…/../../…`` pass as "not s3" and be opened as a local path,
so nothing outside this module looks at a scheme prefix. A string with no scheme (or a one-letter
one, a Windows drive) is a local path; whether a caller may open local paths is the caller's
policy (only embedded ``sam3v run`` jobs may), not a parsing question.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlparse
from urllib.request import url2pathname

from pipeline.core.errors import InputError


class Scheme(StrEnum):
    S3 = "s3"
    HTTP = "http"
    HTTPS = "https"
    STORAGE = "storage"  # a key of the deployment's own storage (staged URL inputs, API uploads)
    UPLOAD = "upload"  # an API upload id, resolved by the API to a storage key
    FILE = "file"
    LOCAL = "local"  # no scheme: a local path


REMOTE = frozenset({Scheme.S3, Scheme.HTTP, Scheme.HTTPS})  # what any caller may name as a video
LOCAL = frozenset({Scheme.FILE, Scheme.LOCAL})
STORAGE_PREFIX = "storage:"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_UPLOAD_ID = re.compile(r"^[0-9a-f]{32}$")


class BadUri(InputError, ValueError):
    """Not a URI this project reads. A ValueError too, so pydantic validators and the manifest's
    line checks report it as the field's problem."""


@dataclass(frozen=True)
class Uri:
    scheme: Scheme
    text: str  # the normal form: lower-case scheme; for FILE and LOCAL the local path itself
    bucket: str = ""  # S3
    key: str = ""  # S3 object key or prefix, STORAGE key, UPLOAD id
    path: str = ""  # FILE and LOCAL: the local file system path

    @property
    def is_local(self) -> bool:
        return self.scheme in LOCAL


def storage_uri(key: str) -> str:
    """How a key of the deployment's own storage is named as a source."""
    return STORAGE_PREFIX + key


def parse_uri(text: str, *, s3_prefix: bool = False) -> Uri:
    """``text`` as a typed ``Uri``; BadUri (naming ``text``) when it is not one. ``s3_prefix``: an
    s3:// URI names a bucket or a prefix (storage), so its key may be empty."""
    text = text.strip()
    if not text:
        raise BadUri("empty")
    match = _SCHEME.match(text)
    if match is None or len(match.group(1)) == 1:
        return Uri(Scheme.LOCAL, text, path=text)
    name = match.group(1).lower()
    try:
        scheme = Scheme(name)
    except ValueError:
        raise BadUri(f"{text!r}: scheme {name!r} is not supported") from None
    rest = text[len(name) + 1:]
    if scheme is Scheme.S3:
        return _s3(text, rest, s3_prefix)
    if scheme in (Scheme.HTTP, Scheme.HTTPS):
        return _http(scheme, text, rest)
    if scheme is Scheme.STORAGE:
        return _storage(text, rest)
    if scheme is Scheme.UPLOAD:
        return _upload(text, rest)
    if scheme is Scheme.FILE:
        return _file(text, rest)
    raise BadUri(f"{text!r}: scheme {name!r} is not supported")  # "local:" is our label, not a scheme


def _check_segments(text: str, key: str, prefix: bool = False) -> None:
    # S3 keys are literal, but a key is also a local file name (LocalStorage, the worker's copies)
    # and a prefix the API's bucket allow-list compares: ".." must not climb out of either, and
    # "." or an empty segment ("a//b", "a/./b") names a file that storage keys never do (the worker
    # would refuse it as an invalid storage key, after the job was accepted).
    parts = (key.rstrip("/") if prefix else key).split("/")  # a prefix may end with "/"
    if ".." in parts:
        raise BadUri(f"{text!r}: a key with '..' segments is not allowed")
    if key.strip("/") and any(p in ("", ".") for p in parts):
        raise BadUri(f"{text!r}: a key with '.' or empty segments ('//') is not allowed")


def _s3(text: str, rest: str, s3_prefix: bool) -> Uri:
    if not rest.startswith("//"):
        raise BadUri(f"{text!r} is not s3://bucket/key")
    bucket, _, key = rest[2:].partition("/")
    if not bucket or (not s3_prefix and not key.strip("/")):
        raise BadUri(f"{text!r} is not s3://bucket/{'prefix' if s3_prefix else 'key'}")
    _check_segments(text, key, s3_prefix)
    return Uri(Scheme.S3, f"s3://{bucket}/{key}" if key else f"s3://{bucket}", bucket=bucket, key=key)


def _http(scheme: Scheme, text: str, rest: str) -> Uri:
    normal = f"{scheme}:{rest}"
    try:
        host = urlparse(normal).hostname
    except ValueError as err:  # e.g. an unbalanced [ in the host
        raise BadUri(f"{text!r}: {err}") from None
    if not host:
        raise BadUri(f"{text!r} has no host")
    return Uri(scheme, normal)


def _storage(text: str, rest: str) -> Uri:
    if not rest or rest.startswith("/"):
        raise BadUri(f"{text!r} is not storage:<key>")
    _check_segments(text, rest)
    return Uri(Scheme.STORAGE, storage_uri(rest), key=rest)


def _upload(text: str, rest: str) -> Uri:
    upload_id = rest.removeprefix("//")
    if not rest.startswith("//") or not _UPLOAD_ID.match(upload_id):
        raise BadUri(f"{text!r} is not upload://<id> (the id an upload was answered with)")
    return Uri(Scheme.UPLOAD, f"upload://{upload_id}", key=upload_id)


def _file(text: str, rest: str) -> Uri:
    parsed = urlparse("file:" + rest)
    if not rest.startswith("//") or parsed.netloc not in ("", "localhost") or not parsed.path:
        raise BadUri(f"{text!r} is not a local file:// URI")
    path = url2pathname(parsed.path)
    return Uri(Scheme.FILE, path, path=path)

