"""Exports: masks.json in the formats other tools read, made from the document alone (no model).

The finalize step writes those a request asks for beside masks.json; ``sam3v export`` writes them
later from a stored masks.json, through the same functions, so both give the same bytes. Names and
file names are the pipeline's (``pipeline.core.specs.EXPORT_NAMES``, ``pipeline.core.layout.OUTPUT_FILES``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline.core.layout import OUTPUT_FILES
from pipeline.core.storage import Storage, join_key
from workers.media.exports.coco import write_coco
from workers.media.exports.davis import write_davis
from workers.media.exports.mot import write_mot
from workers.media.exports.objects import write_objects
from workers.media.exports.ytvis import write_ytvis

# name -> writer(document, path); ``objects`` writes a folder, the others one file.
EXPORTERS: dict[str, Callable[[dict, Path], None]] = {
    "coco": write_coco, "ytvis": write_ytvis, "davis": write_davis, "mot": write_mot, "objects": write_objects,
}


def make_exports(document: dict, names: Iterable[str], directory: Path) -> dict[str, Path]:
    """Write each export in ``names`` under ``directory``; returns {name: local file or folder}."""
    made = {}
    for name in names:
        path = Path(directory) / OUTPUT_FILES[name]
        EXPORTERS[name](document, path)
        made[name] = path
    return made


def publish_exports(made: dict[str, Path], storage: Storage, prefix: str) -> dict[str, str]:
    """Store what ``make_exports`` made under ``prefix``; returns {name: URI} (a folder's URI for
    ``objects``, its files under it)."""
    uris = {}
    for name, path in made.items():
        key = join_key(prefix, OUTPUT_FILES[name])
        if path.is_dir():
            for file in sorted(path.iterdir()):
                storage.put_file(file, join_key(key, file.name))
            uris[name] = storage.uri(key)
        else:
            uris[name] = storage.put_file(path, key)
    return uris
