"""`sam3v model`: the model commands (today: build the tiny test model)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from sam3v.cli.common import err_console, user_errors

app = typer.Typer(help="Manage models (build the tiny test model).", no_args_is_help=True)


@app.command("tiny")
@user_errors
def model_tiny(
    directory: Annotated[Path, typer.Argument(help="Where to save the model (save_pretrained layout).")],
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Save a tiny randomly initialised SAM 3 video model. Its masks are MEANINGLESS: tests and demos only."""
    from workers.model.tiny_model import TINY_WARNING, save_tiny_model

    path = save_tiny_model(directory, seed)
    err_console.print(f"[yellow]warning:[/] {TINY_WARNING}")
    typer.echo(str(path))
