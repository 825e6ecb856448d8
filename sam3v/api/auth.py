"""API keys: ``SAM3V_API_KEYS`` (comma-separated keys) and/or ``SAM3V_API_KEYS_FILE`` (one SHA-256
hex digest of a key a line; ``#`` comments allowed). Only digests are kept and compared, in
constant time. A generation belongs to the digest of the key that created it."""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sam3v.api.errors import APIError

bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <API key>")


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def load_key_digests(environ=os.environ) -> list[str]:
    digests = [digest(k.strip()) for k in environ.get("SAM3V_API_KEYS", "").split(",") if k.strip()]
    path = environ.get("SAM3V_API_KEYS_FILE")
    if path:
        for line in Path(path).read_text().splitlines():
            line = line.split("#", 1)[0].strip().lower()
            if line:
                if len(line) != 64 or any(c not in "0123456789abcdef" for c in line):
                    raise ValueError(f"{path}: {line[:12]}...: not a SHA-256 hex digest")
                digests.append(line)
    return digests


async def owner(request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(bearer)) -> str:
    """The caller's key digest, or 401."""
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials.strip():
        raise APIError(401, "unauthorized", "missing or malformed Authorization: Bearer <key> header")
    got = digest(credentials.credentials.strip())
    match = False
    for known in request.app.state.key_digests:
        match |= hmac.compare_digest(got, known)
    if not match:
        raise APIError(401, "unauthorized", "invalid API key")
    return got
