"""HTTP API load on one API process (uvicorn, one worker) over a real redis-server (started here):

1. ``--clients`` (100) concurrent clients polling GET /api/ai/queue/{id} for ``--duration`` (30) s:
   requests/s, p50/p99 latency, errors;
2. ``--sse`` (1,000) SSE connections to /api/events held open for ``--hold`` (5) s; then one
   completion event is written to the Redis stream and we count the connections that receive it.

No worker runs: the generations stay queued (the API only reads Redis for them).
Run: .venv/bin/python -m benchmarks.bench_api [--duration 30 --clients 100 --sse 1000 --hold 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import redis

from benchmarks.common import machine
from tests.services import RedisServer, free_port, stop_process

KEY = "bench-key"
H = {"Authorization": f"Bearer {KEY}"}


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def poll(base: str, ids: list[str], clients: int, duration: float,
               interval: float = 0.0) -> tuple[list[float], int, int]:
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=base, headers=H, limits=limits, timeout=30) as client:
        end = time.monotonic() + duration

        async def one(i: int):
            nonlocal errors
            while time.monotonic() < end:
                gen_id = ids[i % len(ids)]
                start = time.perf_counter()
                try:
                    r = await client.get(f"/api/ai/queue/{gen_id}")
                    ok = r.status_code == 200 and r.json()["status"] == "queued"
                except httpx.HTTPError:
                    ok = False
                latencies.append(time.perf_counter() - start)
                errors += not ok
                i += clients
                if interval:
                    await asyncio.sleep(interval)  # a real poller waits between polls

        await asyncio.gather(*(one(i) for i in range(clients)))
    return latencies, errors, len(latencies)


async def hold_sse(base: str, n: int, hold: float, redis_url: str, gen_id: str) -> dict:
    connected = 0
    received = 0
    failed = 0
    ready = asyncio.Event()
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=base, headers=H, limits=limits,
                                 timeout=httpx.Timeout(60, connect=60, pool=60)) as client:
        async def one():
            nonlocal connected, received, failed
            try:
                async with client.stream("GET", "/api/events") as r:
                    if r.status_code != 200:
                        failed += 1
                        return
                    connected += 1
                    async for line in r.aiter_lines():
                        if line.startswith("data: ") and f'"generation_id":"{gen_id}"' in line:
                            received += 1
                            return
            except httpx.HTTPError:
                failed += 1

        start = time.monotonic()
        tasks = [asyncio.create_task(one()) for _ in range(n)]
        while connected + failed < n and time.monotonic() - start < 60:
            await asyncio.sleep(0.1)
        connect_s = time.monotonic() - start
        await asyncio.sleep(hold)
        still = connected - received
        sent = time.monotonic()
        r = redis.Redis.from_url(redis_url)
        r.xadd("sam3v:events", {"job": gen_id, "kind": "video_failed", "time": time.time(),
                                "data": json.dumps({"video": "video", "status": "failed", "error": "bench"})})
        done, pending = await asyncio.wait(tasks, timeout=30)
        deliver_s = time.monotonic() - sent
        for t in pending:
            t.cancel()
    return {"connected": connected, "failed": failed, "connect_s": connect_s, "open_after_hold": still,
            "received": received, "deliver_s": deliver_s}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=30.0)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--interval", type=float, default=0.0,
                    help="seconds each client waits between polls (0: as fast as it can, the worst case)")
    ap.add_argument("--sse", type=int, default=1000)
    ap.add_argument("--hold", type=float, default=5.0)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-api-"))
    server = RedisServer(tmp)
    server.start()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {**os.environ, "SAM3V_BROKER_URL": server.url, "SAM3V_STORAGE_URL": str(tmp / "data"),
           "SAM3V_API_KEYS": KEY}
    api = subprocess.Popen([sys.executable, "-m", "uvicorn", "pipeline.api:create_app", "--factory", "--host",
                            "127.0.0.1", "--port", str(port), "--log-level", "warning", "--backlog", "4096"],
                           env=env, stdout=open(tmp / "api.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        for _ in range(300):
            try:
                if httpx.get(f"{base}/api/ai/models/sam-3-video", headers=H).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        ids = []
        for i in range(20):
            r = httpx.post(f"{base}/api/ai/queue", headers=H, json={"model": "sam-3-video", "prompt": "dog",
                                                                   "input_video": f"s3://bench/in/{i}.mp4"})
            ids.append(r.json()["generations"][0]["generation_id"])
        print(f"machine: {machine()}; one uvicorn process, redis-server on localhost, client in the same machine")
        one_lat, _, one_n = asyncio.run(poll(base, ids, 1, 3.0))
        print(f"GET /api/ai/queue/{{id}}: 1 client x 3 s (baseline): {one_n} requests, "
              f"p50 {1000 * statistics.median(one_lat):.1f} ms, p99 {1000 * pct(one_lat, 0.99):.1f} ms")
        lat, errors, n = asyncio.run(poll(base, ids, args.clients, args.duration, args.interval))
        print(f"GET /api/ai/queue/{{id}}: {args.clients} clients (pause {args.interval:g} s between polls) x {args.duration:.0f} s: {n} requests, "
              f"{n / args.duration:.0f} req/s, p50 {1000 * statistics.median(lat):.1f} ms, "
              f"p99 {1000 * pct(lat, 0.99):.1f} ms, max {1000 * max(lat):.1f} ms, errors {errors}")
        s = asyncio.run(hold_sse(base, args.sse, args.hold, server.url, ids[0]))
        print(f"SSE /api/events: {s['connected']}/{args.sse} connected in {s['connect_s']:.1f} s "
              f"({s['failed']} failed), {s['open_after_hold']} still open after {args.hold:.0f} s, "
              f"{s['received']} received the completion event within {s['deliver_s']:.1f} s")
    finally:
        stop_process(api)
        server.stop()


if __name__ == "__main__":
    main()
