"""Fetch URL inputs safely: http(s) only, size and time limits, and no requests to loopback,
link-local, private or otherwise non-public addresses (checked after DNS resolution and again on
every redirect) unless ``SAM3V_URL_ALLOWLIST`` allows them.

DNS rebinding: each hop connects to an address that was checked, never to a fresh lookup. The
request goes to the checked IP itself with the original ``Host`` header; for https the TLS server
name (SNI) and the certificate check use the original host name (httpcore's ``sni_hostname``
request extension), so certificates are verified exactly as for a normal request. Connections
are not kept alive, so a connection to one name is never reused for another. HTTP(S)_PROXY
variables are ignored for URL inputs (a proxy would do its own, unchecked, resolution);
SSL_CERT_FILE / SSL_CERT_DIR are honoured.
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

from pipeline.core.errors import InputError

MAX_REDIRECTS = 5
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _show(url: str) -> str:
    """``url`` without any user:password, for messages."""
    parsed = urlparse(url)
    if parsed.username is None and parsed.password is None:
        return url
    return parsed._replace(netloc=parsed.netloc.rpartition("@")[2]).geturl()


def _entry_host_port(entry: str) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (host, port or None)."""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:  # a bare name or a bare IPv6 address
        host, port = entry, ""
    return host.lower().rstrip("."), int(port) if port.isdigit() else None


def allowed(host: str, port: int, ip: IPAddress, allowlist: list[str]) -> bool:
    """Whether an allowlist entry (CIDR, ``host`` or ``host:port``; host a name or an IP) covers
    this host name / resolved address and port."""
    host = host.lower().rstrip(".")
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
        name, entry_port = _entry_host_port(entry)
        if name in (host, str(ip)) and entry_port in (None, port):
            return True
    return False


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be fetched by default, or None for a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        elif ip in _NAT64:
            ip = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_multicast:
        return "a multicast address"
    if ip.is_private:
        return "a private address"
    if ip.is_reserved or not ip.is_global:
        return "not a public address"
    return None


def resolve_checked(url: str, allowlist: list[str]) -> tuple[str, int, list[str]]:
    """(host, port, resolved IPs in the resolver's order) if every address ``url`` resolves to may
    be reached; InputError otherwise."""
    parsed = urlparse(url)
    if parsed.scheme.lower() not in ("http", "https"):
        raise InputError(f"{_show(url)}: only http:// and https:// URLs are allowed")
    host = parsed.hostname
    if not host:
        raise InputError(f"{_show(url)}: no host")
    try:
        port = parsed.port or (443 if parsed.scheme.lower() == "https" else 80)
    except ValueError:
        raise InputError(f"{_show(url)}: invalid port") from None
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as err:
        reason = getattr(err, "strerror", None) or str(err)
        raise InputError(f"{_show(url)}: unreachable: cannot resolve {host} ({reason})") from None
    ips = list(dict.fromkeys(info[4][0] for info in infos))
    if not ips:
        raise InputError(f"{_show(url)}: unreachable: {host} has no address")
    for text in ips:
        ip = ipaddress.ip_address(text.split("%")[0])
        reason = forbidden_reason(ip)
        if reason and not allowed(host, port, ip, allowlist):
            shown = host if host == str(ip) else f"{host} resolves to {ip},"
            raise InputError(f"{_show(url)}: refused: {shown} {reason} "
                             "(set SAM3V_URL_ALLOWLIST to allow it)")
    return host, port, ips


def check_url(url: str, allowlist: list[str]) -> None:
    """InputError unless ``url`` is http(s) and every address it resolves to may be reached."""
    resolve_checked(url, allowlist)


def _pinned(url: str, ip: str) -> tuple[str, dict, dict]:
    """(URL with the checked IP in place of the name, headers, request extensions)."""
    parsed = urlparse(url)
    host = parsed.hostname or ""
    host_ip = f"[{ip}]" if ":" in ip else ip
    netloc = host_ip + (f":{parsed.port}" if parsed.port else "")
    headers = {"Host": parsed.netloc.rpartition("@")[2]}
    extensions = {"sni_hostname": host} if parsed.scheme.lower() == "https" else {}
    return parsed._replace(netloc=netloc).geturl(), headers, extensions


def fetch_url(url: str, dest: Path, allowlist: list[str], max_bytes: int, timeout: float) -> Path:
    """Download ``url`` to ``dest`` (written under a temporary name beside it, renamed when
    complete). At most ``max_bytes``, ``timeout`` seconds in all, MAX_REDIRECTS redirects, each
    hop checked. Every failure is an InputError naming the URL and the reason."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{uuid.uuid4().hex}.partial")
    shown = _show(url)
    deadline = time.monotonic() + timeout

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise InputError(f"{shown}: download took longer than {timeout:g} s")
        return left

    current = url
    # An explicit transport: proxies from the environment are not used (a proxy would resolve the
    # name itself and, for https, check the certificate against the IP); SSL_CERT_FILE still is.
    transport = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
    try:
        with httpx.Client(follow_redirects=False, transport=transport) as client:
            for _ in range(MAX_REDIRECTS + 1):
                _, _, ips = resolve_checked(current, allowlist)
                response = None
                for n, ip in enumerate(ips):  # the checked addresses, in the resolver's order
                    target, headers, extensions = _pinned(current, ip)
                    request = client.build_request("GET", target, headers=headers, extensions=extensions,
                                                   timeout=httpx.Timeout(min(remaining(), 60.0)))
                    try:
                        response = client.send(request, stream=True)
                        break
                    except httpx.ConnectError as err:
                        if n == len(ips) - 1:
                            raise InputError(f"{shown}: unreachable: {err}") from None
                    except httpx.TimeoutException:
                        raise InputError(f"{shown}: unreachable: timed out") from None
                    except httpx.HTTPError as err:
                        raise InputError(f"{shown}: unreachable: {type(err).__name__}: {err}") from None
                assert response is not None
                try:
                    if response.is_redirect:
                        location = response.headers.get("location")
                        if not location:
                            raise InputError(f"{shown}: redirect without a Location")
                        current = urljoin(current, location)
                        continue
                    if response.status_code != 200:
                        raise InputError(f"{shown}: HTTP {response.status_code}")
                    length = response.headers.get("content-length", "")
                    if length.isdigit() and int(length) > max_bytes:
                        raise InputError(f"{shown}: larger than {max_bytes} bytes ({length})")
                    size = 0
                    with open(tmp, "wb") as out:
                        for block in response.iter_bytes():  # as it arrives: the deadline holds
                            size += len(block)
                            if size > max_bytes:
                                raise InputError(f"{shown}: larger than {max_bytes} bytes")
                            remaining()
                            out.write(block)
                    os.replace(tmp, dest)
                    return dest
                except httpx.TimeoutException:
                    raise InputError(f"{shown}: unreachable: timed out while reading") from None
                except httpx.HTTPError as err:
                    raise InputError(f"{shown}: unreachable: {type(err).__name__}: {err}") from None
                finally:
                    response.close()
            raise InputError(f"{shown}: more than {MAX_REDIRECTS} redirects")
    finally:
        tmp.unlink(missing_ok=True)


def post_json(url: str, body: bytes, headers: dict[str, str], allowlist: list[str], timeout: float) -> int:
    """POST ``body`` to ``url`` under the rules of URL inputs, to a checked address (no fresh
    lookup, no redirects followed, the response body not read). Returns the HTTP status;
    InputError when it cannot be sent."""
    shown = _show(url)
    _, _, ips = resolve_checked(url, allowlist)
    transport = httpx.HTTPTransport(limits=httpx.Limits(max_keepalive_connections=0))
    with httpx.Client(follow_redirects=False, transport=transport, timeout=timeout) as client:
        for n, ip in enumerate(ips):
            target, pinned, extensions = _pinned(url, ip)
            request = client.build_request("POST", target, content=body, headers={**headers, **pinned},
                                           extensions=extensions)
            try:
                response = client.send(request, stream=True)
            except httpx.ConnectError as err:
                if n == len(ips) - 1:
                    raise InputError(f"{shown}: unreachable: {err}") from None
                continue
            except httpx.TimeoutException:
                raise InputError(f"{shown}: timed out after {timeout:g} s") from None
            except httpx.HTTPError as err:
                raise InputError(f"{shown}: {type(err).__name__}: {err}") from None
            response.close()
            return response.status_code
    raise InputError(f"{shown}: unreachable")
