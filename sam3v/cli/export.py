"""`sam3v export`: the exports (coco, ytvis, davis, mot, objects) of a finished video, made later
from its stored masks.json, without the model, and written beside it: the same bytes as asking for
them at submit time (the finalize step and this command share ``workers.media.exports``)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from pipeline.core.errors import InputError, ProcessingError
from sam3v.cli.common import user_errors

app = typer.Typer()

MASKS = "masks.json"


def parse_formats(value: str) -> list[str]:
    """``coco,mot`` -> ["coco", "mot"]; an unknown name is refused by name, before anything is read."""
    from pipeline.core.specs import EXPORT_NAMES

    names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    if not names:
        raise InputError(f"--format: give at least one of {', '.join(EXPORT_NAMES)}")
    if bad := [n for n in names if n not in EXPORT_NAMES]:
        raise InputError(f"--format: unknown format {bad[0]!r} (choose from {', '.join(EXPORT_NAMES)})")
    return names


def open_result(where: str):
    """The storage holding a video's masks.json: a local folder, or a URI (s3://bucket/prefix/job/video,
    a file:// URI); ``.../masks.json`` itself is taken for its folder."""
    from pipeline.core.storage import open_storage
    from pipeline.core.uris import parse_uri

    if where == MASKS or where.endswith("/" + MASKS):
        where = where[: -len(MASKS)].rstrip("/") or "."
    uri = parse_uri(where, s3_prefix=True)
    if uri.is_local and not (Path(uri.path) / MASKS).is_file():
        # Checked here: opening a local storage creates its folder.
        raise InputError(f"{uri.path}: no {MASKS} there (give a video's result folder)")
    return open_storage(uri.text)


@app.command()
@user_errors
def export(
    result: Annotated[str, typer.Argument(help="A video's result folder, or its URI (s3://bucket/prefix/JOB/VIDEO): "
                                               "where its masks.json is. The files are written there.")],
    format: Annotated[str, typer.Option("--format", "-f", help="Comma-separated set of coco, ytvis, davis, mot, "
                                                              "objects.")],
) -> None:
    """Write exports of a finished video beside its masks.json (no model needed)."""
    names = parse_formats(format)
    from pipeline.core.storage import MissingKey

    try:
        from workers.media.exports import make_exports, publish_exports
    except ImportError as err:  # the control image: no pycocotools, Pillow or ffmpeg-python
        raise ProcessingError(f"sam3v export needs the worker install (pip install \".[worker]\"): {err}") from None

    storage = open_result(result)
    try:
        document = json.loads(storage.get_bytes(MASKS))
    except MissingKey as err:
        raise InputError(f"{err.uri}: not found (give a video's result folder, where its {MASKS} is)") from None
    except json.JSONDecodeError as err:
        raise InputError(f"{storage.uri(MASKS)}: not a masks.json ({err})") from None
    with tempfile.TemporaryDirectory(prefix="sam3v-export-") as tmp:
        uris = publish_exports(make_exports(document, names, Path(tmp)), storage, "")
    for name, uri in uris.items():
        typer.echo(f"{name}: {uri}")
