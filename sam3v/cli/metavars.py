"""Readable value names in `--help`. Typer labels each parameter with its Python type (`<list[str]>`,
`<bool>` on every flag and on --help itself, `<int range>`) and wraps a required argument in braces
in the usage line (`{video}`). ``readable`` walks the whole command tree once and names each value
as Unix help does: TEXT, N, NUMBER, PATH, a choice list, nothing after a flag, and arguments in upper
case. A metavar a command sets itself (``typer.Option(metavar="URL")``) is kept."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import get_args, get_origin

import typer


def metavar_for(param) -> str:
    """The value name of ``param`` (a Typer option or argument) in help; "" for a flag, which takes
    no value."""
    if getattr(param, "is_flag", False) or getattr(param, "count", False):
        return ""
    desc = getattr(param, "type_descriptor", None)
    if desc is not None and desc.is_choice:
        return "|".join(str(c.value if isinstance(c, Enum) else c) for c in desc.choices)
    if param.param_type_name == "argument":
        return (param.name or "value").upper()
    kind = desc.annotation if desc is not None else str
    if get_origin(kind) is list:  # a repeatable option: one value each time
        kind = get_args(kind)[0]
    if kind is bool:
        return ""
    if kind is int:
        return "N"
    if kind is float:
        return "NUMBER"
    if desc is not None and (desc.is_path or kind is Path):
        return "PATH"
    return "TEXT"


def readable(command):
    """Give every parameter of ``command`` (a Typer command or group) and of all its subcommands a
    readable metavar; returns ``command``."""
    ctx = typer.Context(command, info_name=command.name)
    for param in command.get_params(ctx):  # the --help option included (the command caches it)
        if param.metavar is None:
            param.metavar = metavar_for(param)
        if param.param_type_name == "argument":
            name = param.metavar if param.required else f"[{param.metavar}]"
            # Typer's usage line braces a required argument's name ("{video}"); say it as Unix help does.
            param.get_usage_pieces = lambda ctx, name=name: [name]
            param.display_type_rich = lambda ctx: None  # its row names it already; no "<path>" beside
    for sub in getattr(command, "commands", {}).values():
        readable(sub)
    return command
