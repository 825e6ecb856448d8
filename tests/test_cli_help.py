"""Every command's --help (the root, every sub-app and subcommand) names values readably: none of
Typer's type labels (`<list[str]>`, `<bool>`, `<int range>`...) nor braced arguments (`{video}`)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import typer

from sam3v.cli import app

# Typer's own labels: a Python type in angle brackets, or a required argument in braces.
ARTEFACT = re.compile(r"<(?:list\[\w+\]|bool|str|int|int range|float|float range|path|file|dir|datetime)>|\{[a-z_]+\}")
SEPARATOR = "=== sam3v help of: "

# One interpreter runs the real entry point (sam3v.cli:main) once per command, as a shell would.
_DRIVER = """
import sys
from sam3v.cli import main
for path in sys.argv[1:]:
    print(%r + path, flush=True)
    sys.argv = ["sam3v", *path.split(), "--help"]
    try:
        main()
    except SystemExit as done:
        assert not done.code, (path, done.code)
""" % SEPARATOR


def _command_paths(command, prefix: tuple[str, ...] = ()) -> list[str]:
    paths = [" ".join(prefix)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        paths += _command_paths(sub, (*prefix, name))
    return paths


def test_no_type_artefacts_in_any_help():
    paths = _command_paths(typer.main.get_command(app))
    assert {"run", "segment", "worker", "submit", "retry", "jobs prune", "schedule add"} <= set(paths), paths
    env = {**os.environ, "COLUMNS": "200"}
    done = subprocess.run([sys.executable, "-c", _DRIVER, *paths], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    helps = dict(zip(paths, done.stdout.split(SEPARATOR)[1:]))
    assert len(helps) == len(paths)
    for path, text in helps.items():
        assert "Usage: sam3v" in text, (path, text)
        found = ARTEFACT.findall(text)
        assert not found, f"`sam3v {path} --help` shows {found}:\n{text}"
    # Readable names instead: a value's kind, choices, flags bare, arguments upper case.
    assert re.search(r"Usage: sam3v segment \[OPTIONS\] VIDEO\b", helps["segment"]), helps["segment"]
    assert re.search(r"--prompt\s+-p\s+TEXT\b", helps["segment"]), helps["segment"]
    assert re.search(r"--on-done\s+URL\b", helps["submit"]) and re.search(r"--check-inputs\s+sample\|all\|none", helps["submit"])
    assert re.search(r"--video\s+ID\b", helps["retry"]), helps["retry"]
    assert re.search(r"--help\s+Show this message", helps["status"]), helps["status"]
