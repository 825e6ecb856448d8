"""Run a command with stderr on a pseudo-terminal (a real one as far as the command can tell: rich
draws its live bars there), stdout a pipe; the terminal's text comes back with escape codes removed."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import termios
import threading
from dataclasses import dataclass

_ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


@dataclass
class OnTerminal:
    returncode: int
    stdout: str
    terminal: str  # everything written to the terminal, escape codes removed, in order


def run_on_terminal(argv: list[str], env: dict, timeout: float = 600, columns: int = 200) -> OnTerminal:
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {**env, "TERM": "xterm-256color", "COLUMNS": str(columns)}
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer has closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(10)
        os.close(master)
    text = _ESCAPES.sub("", b"".join(chunks).decode(errors="replace"))
    return OnTerminal(proc.returncode, out.decode(), text)
