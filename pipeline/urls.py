"""Fetch URL inputs safely: http(s) only, size and time limits, and no requests to loopback,
link-local or private addresses (checked after DNS resolution and again on every redirect)
unless ``SAM3V_URL_ALLOWLIST`` allows them.

To close the DNS-rebinding gap between the check and the connection, each hop connects to the
address that was checked: plain http by putting that IP in the URL with the original Host
header; https keeps the name for certificate checks and re-resolves just before connecting,
refusing if the answer changed to a forbidden address.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import time
import uuid
from pathlib import Path
from urllib.parse import urljoin, urlparse

import httpx

from pipeline.errors import InputError

MAX_REDIRECTS = 5


def _allowed(host: str, port: int, ip: ipaddress._BaseAddress, allowlist: list[str]) -> bool:
    for entry in allowlist:
        entry = entry.strip()
        if not entry:
            continue
        try:
            if ip in ipaddress.ip_network(entry, strict=False):
                return True
            continue
        except ValueError:
            pass
        name, _, entry_port = entry.rpartition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and not entry_port.isdigit():
            name, entry_port = entry, ""
        if name.lower() in (host.lower(), str(ip)) and (not entry_port or int(entry_port) == port):
            return True
    return False


def _forbidden_reason(ip: ipaddress._BaseAddress) -> str | None:
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_private:
        return "a private address"
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return "not a public address"
    return None


def resolve_checked(url: str, allowlist: list[str]) -> tuple[str, int, list[str]]:
    """(host, port, resolved IPs) if every address ``url`` resolves to may be reached."""
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https"):
        raise InputError(f"{url}: only http:// and https:// URLs are allowed")
    host = parsed.hostname
    if not host:
        raise InputError(f"{url}: no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise InputError(f"{url}: unreachable: cannot resolve {host} ({err.strerror})") from None
    ips = sorted({info[4][0] for info in infos})
    for text in ips:
        ip = ipaddress.ip_address(text.split("%")[0])
        reason = _forbidden_reason(ip)
        if reason and not _allowed(host, port, ip, allowlist):
            raise InputError(f"{url}: refused: {host} resolves to {ip}, {reason} "
                             "(set SAM3V_URL_ALLOWLIST to allow it)")
    return host, port, ips


def check_url(url: str, allowlist: list[str]) -> None:
    resolve_checked(url, allowlist)


def _pinned(url: str, ip: str) -> tuple[str, dict]:
    """For http: the URL with the checked IP in place of the name, and the Host header."""
    parsed = urlparse(url)
    if parsed.scheme != "http":
        return url, {}
    host_ip = f"[{ip}]" if ":" in ip else ip
    netloc = host_ip + (f":{parsed.port}" if parsed.port else "")
    return parsed._replace(netloc=netloc).geturl(), {"Host": parsed.netloc.rpartition("@")[2]}


def fetch_url(url: str, dest: Path, allowlist: list[str], max_bytes: int, timeout: float) -> Path:
    """Download ``url`` to ``dest`` (written under a temporary name, renamed when complete)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
    deadline = time.monotonic() + timeout
    current = url
    try:
        with httpx.Client(follow_redirects=False, timeout=httpx.Timeout(min(timeout, 60.0))) as client:
            for _ in range(MAX_REDIRECTS + 1):
                _, _, ips = resolve_checked(current, allowlist)
                target, headers = _pinned(current, ips[0])
                try:
                    with client.stream("GET", target, headers=headers) as response:
                        if response.is_redirect:
                            location = response.headers.get("location")
                            if not location:
                                raise InputError(f"{url}: redirect without a Location")
                            current = urljoin(current, location)
                            continue
                        if response.status_code != 200:
                            raise InputError(f"{url}: HTTP {response.status_code}")
                        length = response.headers.get("content-length")
                        if length and length.isdigit() and int(length) > max_bytes:
                            raise InputError(f"{url}: larger than {max_bytes} bytes ({length})")
                        size = 0
                        with open(tmp, "wb") as out:
                            for block in response.iter_bytes(1 << 20):
                                size += len(block)
                                if size > max_bytes:
                                    raise InputError(f"{url}: larger than {max_bytes} bytes")
                                if time.monotonic() > deadline:
                                    raise InputError(f"{url}: download took longer than {timeout:.0f} s")
                                out.write(block)
                        os.replace(tmp, dest)
                        return dest
                except httpx.HTTPError as err:
                    raise InputError(f"{url}: unreachable: {type(err).__name__}: {err}") from None
            raise InputError(f"{url}: more than {MAX_REDIRECTS} redirects")
    finally:
        tmp.unlink(missing_ok=True)
