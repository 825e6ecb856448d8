"""URL inputs: http(s) only, no loopback/link-local/private targets unless allowed, checked on
every redirect. Traffic stays on 127.0.0.1 (a real http.server in a thread)."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from pipeline.errors import InputError
from pipeline.urls import fetch_url

BODY = b"x" * 5000


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        if self.path == "/video.mp4":
            self.send_response(200)
            self.send_header("Content-Length", str(len(BODY)))
            self.end_headers()
            self.wfile.write(BODY)
        elif self.path.startswith("/redirect"):
            self.send_response(302)
            self.send_header("Location", self.path.split("to=", 1)[1])
            self.end_headers()
        else:
            self.send_response(404)
            self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_loopback_refused_by_default_allowed_by_allowlist(server, tmp_path):
    url = f"http://{server}/video.mp4"
    with pytest.raises(InputError, match="loopback"):
        fetch_url(url, tmp_path / "a", [], 10**6, 10)
    assert fetch_url(url, tmp_path / "a", [server], 10**6, 10).read_bytes() == BODY
    assert fetch_url(url, tmp_path / "b", ["127.0.0.0/8"], 10**6, 10).read_bytes() == BODY


def test_redirects_are_checked_on_every_hop(server, tmp_path):
    for target in ("http://169.254.169.254/latest/meta-data/", "http://127.0.0.1:1/"):
        with pytest.raises(InputError, match="refused"):
            fetch_url(f"http://{server}/redirect?to={target}", tmp_path / "c", [server], 10**6, 10)
    assert not list(tmp_path.iterdir())


def test_limits_and_errors(server, tmp_path):
    with pytest.raises(InputError, match="larger than"):
        fetch_url(f"http://{server}/video.mp4", tmp_path / "d", [server], 100, 10)
    with pytest.raises(InputError, match="HTTP 404"):
        fetch_url(f"http://{server}/missing", tmp_path / "e", [server], 10**6, 10)
    with pytest.raises(InputError, match="only http"):
        fetch_url("file:///etc/passwd", tmp_path / "f", [], 10**6, 10)
    with pytest.raises(InputError, match="link-local"):
        fetch_url("http://169.254.169.254/", tmp_path / "g", [], 10**6, 10)
    assert not list(tmp_path.iterdir()), "no partial file is left behind"
