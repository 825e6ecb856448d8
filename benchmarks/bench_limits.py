"""How soon limits act, and how fast the manifest parser is: the timings the tests used to assert
(a test asserting wall-clock time fails on a loaded machine and proves nothing on a quiet one), each
measured against its baseline in the same run:

1. ``parse_manifest`` of a 10,000-line JSONL manifest vs ``json.loads`` of the same lines
   (target: < 1 s in all, the bound tests/test_manifest.py used to assert);
2. ``fetch_url``'s overall limit: the time to give up on a server that trickles 10 bytes every
   0.05 s (every read in time, the whole 10 s) vs the limit (target: limit + < 0.7 s);
3. ``POST /api/ai/videos/generate`` with SAM3V_API_SYNC_TIMEOUT=1 and no worker: the time to its
   504 vs the limit (target: at or after the limit, < 1 s late; tests/test_api.py's sync test used
   to assert limit <= t < 4 s), one ``sam3v api`` over a real redis-server started here.

Run: .venv/bin/python -m benchmarks.bench_limits [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from benchmarks.common import interleaved, machine
from pipeline.control.manifest import parse_manifest
from pipeline.core.errors import InputError
from pipeline.core.urls import fetch_url
from tests.services import RedisServer, start_api, stop_process

KEY = "bench-key"
SYNC_LIMIT = 1.0
FETCH_LIMIT = 0.5


def bench_manifest(repeats: int) -> str:
    data = "".join(json.dumps({"video": f"s3://b/{i}.mp4"}) + "\n" for i in range(10_000)).encode()
    ours, base = interleaved(lambda: parse_manifest(data, "big.jsonl", "dog"),
                             lambda: [json.loads(x) for x in data.splitlines()], repeats)
    return (f"parse_manifest, 10,000 lines: {ours:.3f} s vs json.loads alone {base:.3f} s: "
            f"{ours / base:.1f}x (target < 1 s: {'met' if ours < 1.0 else 'MISSED'})")


class Trickle(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2000")
        self.end_headers()
        try:
            for _ in range(200):
                self.wfile.write(b"y" * 10)
                self.wfile.flush()
                time.sleep(0.05)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def bench_fetch_limit(repeats: int) -> str:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Trickle)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    host = f"127.0.0.1:{httpd.server_address[1]}"
    late = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for i in range(repeats):
                start = time.monotonic()
                try:
                    fetch_url(f"http://{host}/x", Path(tmp) / f"{i}", [host], 10**6, FETCH_LIMIT)
                    raise SystemExit("fetch_url finished a 10 s download under a 0.5 s limit")
                except InputError:
                    late.append(time.monotonic() - start - FETCH_LIMIT)
    finally:
        httpd.shutdown()
        httpd.server_close()
    return (f"fetch_url, limit {FETCH_LIMIT:g} s, trickling server: gave up {1000 * min(late):.0f}-"
            f"{1000 * max(late):.0f} ms after the limit (target < 700 ms: {'met' if max(late) < 0.7 else 'MISSED'})")


def bench_sync_timeout(repeats: int) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="bench-limits-"))
    server = RedisServer(tmp)
    server.start()
    env = {**os.environ, "SAM3V_BROKER_URL": server.url, "SAM3V_STORAGE_URL": str(tmp / "data"),
           "SAM3V_API_KEYS": KEY, "SAM3V_API_S3_BUCKETS": "bench", "SAM3V_API_SYNC_TIMEOUT": str(SYNC_LIMIT)}
    api, base = start_api(env, tmp / "api.log")
    took = []
    try:
        for i in range(repeats):
            start = time.monotonic()
            r = httpx.post(f"{base}/api/ai/videos/generate", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                           json={"model": "sam-3-video", "prompt": "dog", "input_video": f"s3://bench/in/{i}.mp4"})
            took.append(time.monotonic() - start)
            if r.status_code != 504:
                raise SystemExit(f"expected 504, got {r.status_code}: {r.text}")
    finally:
        stop_process(api)
        server.stop()
    ok = min(took) >= SYNC_LIMIT and max(took) < SYNC_LIMIT + 1.0
    return (f"sync generate, SAM3V_API_SYNC_TIMEOUT={SYNC_LIMIT:g} s, no worker: 504 after "
            f"{min(took):.2f}-{max(took):.2f} s (target: limit <= t < limit + 1 s: {'met' if ok else 'MISSED'})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    print(f"machine: {machine()}")
    print(bench_manifest(args.repeats))
    print(bench_fetch_limit(args.repeats))
    print(bench_sync_timeout(args.repeats))


if __name__ == "__main__":
    main()
