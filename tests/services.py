"""Real services for integration tests: redis-server, a moto S3 server and sam3v worker processes.

Everything listens on 127.0.0.1 only and is stopped by the fixtures that start it.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server with AOF persistence in its own directory, restartable on the same port."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
             "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        for _ in range(100):
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)

    def kill(self) -> None:
        """SIGKILL, as a crash: no shutdown, clients keep their now dead connections."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` (VmRSS), MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_worker(env: dict, queues: str, name: str, log: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sam3v.cli", "worker", "--queues", queues, "--concurrency", "1",
         "--loglevel", "INFO", "--hostname", f"{name}@%h", *extra],
        env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)


def stop_process(proc: subprocess.Popen, sig=signal.SIGTERM, timeout: float = 30) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def start_api(env: dict, log: Path, timeout: float = 30, key: str | None = None,
              args: tuple[str, ...] = ()) -> tuple[subprocess.Popen, str]:
    """``sam3v api`` on a free port of 127.0.0.1; returns the process and its base URL once it answers."""
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sam3v.cli", "api", "--host", "127.0.0.1", "--port", str(port),
                             "--log-level", "warning", *args],
                            env=env, stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    key = key or env.get("SAM3V_API_KEYS", "").split(",")[0]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(f"{base}/api/ai/models/sam-3-video", headers={"Authorization": f"Bearer {key}"}).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    stop_process(proc)
    raise RuntimeError(f"sam3v api did not start: {log.read_text()[-2000:]}")
