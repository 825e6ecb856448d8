"""The README's webhook verification example, run as written: tests verify real deliveries with it."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MARK = "<!-- verify-webhook -->"


def readme_verify() -> Callable[..., dict]:
    """``verify(secret, headers, body, seen, tolerance=300)`` from the README's code block after MARK."""
    text = README.read_text()
    assert MARK in text, f"README.md has no {MARK} example"
    code = re.match(r"\s*```python\n(.*?)\n```", text.split(MARK, 1)[1], re.S)
    assert code, "the verification example is not a python code block right after its mark"
    scope: dict = {}
    exec(compile(code.group(1), f"{README}:verify-webhook", "exec"), scope)  # noqa: S102 (our own README)
    return scope["verify"]
