"""URL inputs: http(s) only, no loopback/link-local/private targets unless allowed, checked on
every redirect, and the connection goes to the address that was checked (no DNS rebinding).
Traffic stays on 127.0.0.1 (real http.server instances in threads); names other than 127.0.0.1
are resolved by a fake resolver that answers 127.0.0.1."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.core.errors import InputError
from pipeline.core.urls import allowed, check_url, fetch_url, forbidden_reason

BODY = b"x" * 5000
SLOW_WRITES = 200  # /slow: 10 bytes every 0.05 s
HOSTS: list[str] = []  # Host headers the servers saw


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        HOSTS.append(self.headers.get("Host", ""))
        if self.path == "/video.mp4":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path == "/unsized":  # no Content-Length: only the streamed count can stop it
            self.send_response(200)
            self.end_headers()
            self.wfile.write(BODY)
            self.close_connection = True
        elif self.path == "/slow":  # every read arrives in time; the whole takes 10 s
            self.send_response(200)
            self.send_header("Content-Length", str(SLOW_WRITES * 10))
            self.end_headers()
            try:
                for _ in range(SLOW_WRITES):
                    self.wfile.write(b"y" * 10)
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass
        elif self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.split("to=", 1)[1])
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(301)
            self.send_header("Location", "/loop")
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


def serve(httpd):
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    return httpd


@pytest.fixture(scope="module")
def server():
    httpd = serve(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def fake_dns(monkeypatch):
    """``*.test`` names resolve to 127.0.0.1 once each; a second lookup of the same name fails, so
    a fetch that works proves the connection used the address that was checked."""
    real = socket.getaddrinfo
    looked_up: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, bytes):
            host = host.decode()
        if host.endswith(".test"):
            if host in looked_up:
                raise socket.gaierror(socket.EAI_NONAME, "second lookup (rebinding attempt)")
            looked_up.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        assert host in ("127.0.0.1", "localhost", "::1"), f"no lookups beyond loopback: {host}"
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return looked_up


def test_loopback_refused_by_default_allowed_by_allowlist(server, tmp_path):
    url = f"http://{server}/video.mp4"
    with pytest.raises(InputError, match=r"refused: 127\.0\.0\.1 a loopback address .*SAM3V_URL_ALLOWLIST"):
        fetch_url(url, tmp_path / "a", [], 10**6, 10)
    assert fetch_url(url, tmp_path / "a", [server], 10**6, 10).read_bytes() == BODY
    assert fetch_url(url, tmp_path / "b", ["127.0.0.0/8"], 10**6, 10).read_bytes() == BODY
    assert fetch_url(url, tmp_path / "c", ["127.0.0.1"], 10**6, 10).read_bytes() == BODY
    with pytest.raises(InputError, match="refused"):
        fetch_url(url, tmp_path / "d", ["127.0.0.1:1", "10.0.0.0/8"], 10**6, 10)  # another port


def test_redirects_are_checked_on_every_hop(server, tmp_path):
    for target in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:1/"):
        with pytest.raises(InputError, match="refused"):
            fetch_url(f"http://{server}/redirect?to={target}", tmp_path / "c", [server], 10**6, 10)
    with pytest.raises(InputError, match="link-local"):
        fetch_url(f"http://{server}/redirect?to=http://169.254.169.254/", tmp_path / "c", [server], 10**6, 10)
    got = fetch_url(f"http://{server}/redirect?to=/video.mp4", tmp_path / "d", [server], 10**6, 10)
    assert got.read_bytes() == BODY
    with pytest.raises(InputError, match="more than 5 redirects"):
        fetch_url(f"http://{server}/loop", tmp_path / "e", [server], 10**6, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["d"]


def test_limits_and_errors(server, tmp_path):
    with pytest.raises(InputError, match="larger than 100 bytes"):
        fetch_url(f"http://{server}/video.mp4", tmp_path / "d", [server], 100, 10)
    with pytest.raises(InputError, match="larger than 100 bytes"):
        fetch_url(f"http://{server}/unsized", tmp_path / "d", [server], 100, 10)
    with pytest.raises(InputError, match="HTTP 404"):
        fetch_url(f"http://{server}/missing", tmp_path / "e", [server], 10**6, 10)
    for bad in ("file:///etc/passwd", "ftp://127.0.0.1/x", "gopher://127.0.0.1/"):
        with pytest.raises(InputError, match="only http"):
            fetch_url(bad, tmp_path / "f", ["127.0.0.0/8"], 10**6, 10)
    with pytest.raises(InputError, match="link-local"):
        fetch_url("http://169.254.169.254/", tmp_path / "g", [], 10**6, 10)
    with pytest.raises(InputError, match="invalid port"):
        fetch_url("http://127.0.0.1:99999/", tmp_path / "g", [], 10**6, 10)
    with pytest.raises(InputError, match="unreachable"):
        fetch_url("http://127.0.0.1:1/", tmp_path / "g", ["127.0.0.1"], 10**6, 10)
    with pytest.raises(InputError) as err:
        fetch_url("http://user:secret@169.254.169.254/", tmp_path / "g", [], 10**6, 10)
    assert "secret" not in str(err.value)
    assert not list(tmp_path.iterdir()), "no partial file is left behind"


def test_overall_time_limit(server, tmp_path):
    """A server that answers every read well within the per-read timeout but takes 10 s in all is
    stopped by the overall limit (its message, not a read timeout's). How soon after the limit:
    benchmarks/bench_limits.py."""
    with pytest.raises(InputError, match=r"download took longer than 1 s"):
        fetch_url(f"http://{server}/slow", tmp_path / "s", [server], 10**6, 1.0)
    assert not list(tmp_path.iterdir())


def test_http_connects_to_the_checked_address(server, tmp_path, fake_dns):
    port = server.rsplit(":", 1)[1]
    HOSTS.clear()
    got = fetch_url(f"http://media.test:{port}/video.mp4", tmp_path / "v", [f"media.test:{port}"], 10**6, 10)
    assert got.read_bytes() == BODY
    assert HOSTS == [f"media.test:{port}"], "the server sees the original Host"
    assert fake_dns == ["media.test"], "resolved once: the connection reused the checked address"
    with pytest.raises(InputError, match="refused: other.test resolves to 127.0.0.1, a loopback"):
        check_url(f"http://other.test:{port}/", [f"media.test:{port}"])


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    """An https server on 127.0.0.1 whose self-signed certificate names media.test."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "media.test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("media.test")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(ski, critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
            .sign(key, hashes.SHA256()))
    folder = tmp_path_factory.mktemp("tls")
    cert_file, key_file = folder / "cert.pem", folder / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    serve(httpd)
    yield httpd.server_address[1], cert_file
    httpd.shutdown()
    httpd.server_close()


def test_https_pins_the_address_and_verifies_the_name(tls_server, tmp_path, fake_dns, monkeypatch):
    port, cert_file = tls_server
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    HOSTS.clear()
    got = fetch_url(f"https://media.test:{port}/video.mp4", tmp_path / "v", [f"media.test:{port}"], 10**6, 10)
    assert got.read_bytes() == BODY and HOSTS == [f"media.test:{port}"] and fake_dns == ["media.test"]
    monkeypatch.delenv("SSL_CERT_FILE")  # an untrusted certificate is refused
    with pytest.raises(InputError, match="unreachable"):
        fetch_url(f"https://media2.test:{port}/video.mp4", tmp_path / "w", ["127.0.0.1"], 10**6, 10)
    assert [p.name for p in tmp_path.iterdir()] == ["v"]


@pytest.mark.parametrize("address, reason", [
    ("127.0.0.1", "loopback"), ("::1", "loopback"), ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.1", "private"), ("fd00::1", "private"),
    ("0.0.0.0", "unspecified"), ("::", "unspecified"), ("224.0.0.1", "multicast"), ("ff02::1", "multicast"),
    ("240.0.0.1", "address"), ("100.64.0.1", "not a public"), ("::ffff:127.0.0.1", "loopback"),
    ("64:ff9b::a9fe:a9fe", "link-local"), ("8.8.8.8", None), ("2001:4860:4860::8888", None),
])
def test_forbidden_reason(address, reason):
    got = forbidden_reason(ipaddress.ip_address(address))
    assert (got is None) if reason is None else (reason in got)


def test_allowlist_entry_forms():
    ip = ipaddress.ip_address("10.0.0.5")
    assert allowed("media.local", 80, ip, ["media.local"])
    assert allowed("Media.Local.", 8080, ip, ["media.local:8080"])
    assert not allowed("media.local", 80, ip, ["media.local:8080"])
    assert allowed("anything", 443, ip, ["10.0.0.0/8"]) and allowed("anything", 443, ip, ["10.0.0.5:443"])
    assert not allowed("anything", 443, ip, ["10.0.0.5:80", "11.0.0.0/8", "", "other"])
    v6 = ipaddress.ip_address("fd00::5")
    assert allowed("h", 8080, v6, ["[fd00::5]:8080"]) and allowed("h", 1, v6, ["fd00::/64"])
    assert allowed("h", 1, v6, ["fd00::5"]) and not allowed("h", 1, v6, ["[fd00::5]:8080"])
