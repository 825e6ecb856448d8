"""How `sam3v flower` starts Flower: its API usable, its state kept, no secret on its command line.

- Credentials and the broker URL reach Flower through its environment, never argv (which every
  local user reads in ``ps``): Flower reads ``FLOWER_BASIC_AUTH`` itself, and its Celery app
  (``sam3v.flower_app``) reads ``SAM3V_BROKER_URL``.
- Flower 2.x answers 401 on ``/api/*`` unless basic auth is set or ``FLOWER_UNAUTHENTICATED_API``
  is: without either, a password is generated and printed once; the unauthenticated API is allowed
  on a loopback address only (anyone who reaches the port would read every task's arguments).
- ``--persistent`` with a state file: a restart keeps the task history.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import InputError

USER = "sam3v"
TRUE = ("1", "true", "yes", "on", "y", "t")
# Flower writes its state on shutdown; also every minute, so that a kill loses a minute at most.
STATE_SAVE_INTERVAL_MS = 60_000


@dataclass(frozen=True)
class Launch:
    argv: list[str]
    env: dict[str, str]
    notices: list[str]  # for stderr: the generated password (once), or why the API is locked


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def unauthenticated_api(env: dict[str, str]) -> bool:
    return (env.get("FLOWER_UNAUTHENTICATED_API") or "").strip().lower() in TRUE


def _auth(env: dict[str, str], basic_auth: str | None, address: str, generate: bool) -> list[str]:
    """Set ``env``'s auth; returns the notices to print."""
    if basic_auth:
        if ":" not in basic_auth:
            raise InputError("FLOWER_BASIC_AUTH / --basic-auth: expected user:password")
        env["FLOWER_BASIC_AUTH"] = basic_auth
        return []
    if unauthenticated_api(env):
        if not is_loopback(address):
            raise InputError(f"FLOWER_UNAUTHENTICATED_API opens Flower's API to whoever reaches --address {address}: "
                             "use it with a loopback address only (127.0.0.1), or set FLOWER_BASIC_AUTH=user:password")
        return []
    if generate:
        password = secrets.token_urlsafe(18)
        env["FLOWER_BASIC_AUTH"] = f"{USER}:{password}"
        return [f"Flower's UI and API: user {USER}, password {password} (generated now and printed once; "
                "FLOWER_BASIC_AUTH=user:password chooses one)"]
    return ["warning: Flower's API (/api/tasks, /api/workers) answers 401 to everyone: set "
            "FLOWER_BASIC_AUTH=user:password, or FLOWER_UNAUTHENTICATED_API=true with a loopback --address"]


def flower_launch(port: int, address: str, basic_auth: str | None, state: Path, generate_password: bool,
                  environ: dict[str, str] | None = None) -> Launch:
    env = dict(os.environ if environ is None else environ)
    env.pop("FLOWER_BASIC_AUTH", None)  # set again below, from the option (which reads it too)
    notices = _auth(env, basic_auth, address, generate_password)
    state.parent.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "celery", "-A", "sam3v.flower_app", "flower", f"--port={port}",
            f"--address={address}", "--persistent=True", f"--db={state}",
            f"--state_save_interval={STATE_SAVE_INTERVAL_MS}"]
    return Launch(argv, env, notices)
