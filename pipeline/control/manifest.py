"""Manifests: JSONL (one object a line) or CSV with a header row of the same field names.

Validation reports every bad line with its 1-based line number and a reason naming the field;
the producer records them in the job (or refuses the job with --strict).
"""

from __future__ import annotations

import codecs
import csv
import difflib
import hashlib
import io
import json
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TextIO
from urllib.parse import urlparse

from pydantic import BaseModel, ValidationError

from pipeline.core.errors import InputError
from pipeline.core.layout import RESERVED_VIDEO_IDS, is_report_name
from pipeline.core.prompt_tokens import prompt_problem
from pipeline.core.specs import DEFAULT_MAX_PROMPTS, OPTION_FIELDS, VideoSpec, first_error, too_many_prompts
from pipeline.core.uris import REMOTE, BadUri, Scheme, parse_uri
from pipeline.core.visual_prompts import too_many

# objects, exemplars: visual prompts (pipeline.core.visual_prompts), JSON arrays (a CSV cell holds the JSON).
VISUAL_FIELDS = ("objects", "exemplars")
FIELDS = {"id", "video", "input_video", "prompt", "prompts", *VISUAL_FIELDS, *OPTION_FIELDS}
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # fullmatch: "$" would let a trailing newline in
_SLUG = re.compile(r"[^A-Za-z0-9._-]+")
# What one video may store in Redis (its item: id, source, prompts, options), kept there for the
# job's retention on the Redis that may also be the broker. A line within every field's own limits
# (16 prompts of at most 1 KiB, ids of 128) stays far below; a longer URL is refused here.
# Mask prompts are counted apart: one COCO RLE of a 1080p object is a few KB, a ragged one tens.
MAX_ITEM_BYTES = 32 * 1024
MAX_MASK_BYTES = 256 * 1024  # all of one video's mask prompts together (their counts strings)


class Rejected(BaseModel):
    line: int
    reason: str
    video: str | None = None  # the line's input as written, when it named one (results.jsonl shows it)


class ManifestResult(BaseModel):
    items: list[VideoSpec]
    rejected: list[Rejected]


def manifest_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _check_video(video: object, allow_local: bool, allow_storage: bool) -> str:
    """The video's normal form (``parse_uri``): what workers read, whatever case the scheme had."""
    if video is None or (isinstance(video, str) and not video.strip()):
        raise ValueError("video: missing or empty")
    if not isinstance(video, str):
        raise ValueError("video: must be a string (s3://, http(s):// URL or, in embedded mode, a path)")
    try:
        uri = parse_uri(video)
    except BadUri as err:
        raise ValueError(f"video: {err}") from None
    if uri.scheme in REMOTE or (uri.scheme is Scheme.STORAGE and allow_storage):
        return uri.text
    if uri.is_local:
        if not allow_local:
            what = "file:// URIs" if uri.scheme is Scheme.FILE else "local paths"
            raise ValueError(f"video: {what} ({video.strip()!r}) are only allowed in embedded mode (sam3v run)")
        return uri.path
    raise ValueError(f"video: {video.strip()!r}: scheme {uri.scheme.value!r} is not supported here "
                     "(use s3://, http:// or https://)")


def _default_id(line: int, video: str) -> str:
    stem = PurePosixPath(urlparse(video).path or video).stem
    slug = _SLUG.sub("-", stem).strip("-.")[:40] or "video"
    return f"{line:06d}-{slug}"


def _prompts(raw: dict, default_prompt: str | None, limit: int, visual: dict) -> list[str]:
    """The line's prompts, at most ``limit``; an absent, empty or whitespace-only prompt takes the
    job's default, unless the line prompts objects and no exemplars (``visual``: its objects and
    exemplars): a line with only a box means that object alone. Exemplars sharpen a text concept,
    so a line with them takes the default whether or not it has objects; with no default it stays
    without text and the spec rejects it at ``exemplars``."""
    prompts: list[str] = []
    if raw.get("prompts") is not None:
        value = raw["prompts"]
        if isinstance(value, str):
            value = value.split("|")
        if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
            raise ValueError("prompts: must be a list of strings")
        prompts = [p.strip() for p in value]
        if prompts == [""]:
            prompts = []
        if any(not p for p in prompts):
            raise ValueError("prompts: an entry is empty or whitespace")
        if problem := too_many_prompts(len(prompts), limit):
            raise ValueError(f"prompts: {problem}")
        for p in prompts:
            if problem := prompt_problem(p):
                raise ValueError(f"prompts: {problem}")
    elif raw.get("prompt") is not None:
        if not isinstance(raw["prompt"], str):
            raise ValueError("prompt: must be a string")
        prompts = [raw["prompt"].strip()] if raw["prompt"].strip() else []
        if prompts and (problem := prompt_problem(prompts[0])):
            raise ValueError(f"prompt: {problem}")
    if prompts or ("objects" in visual and "exemplars" not in visual):
        return prompts
    if default_prompt is not None:
        return [default_prompt.strip()]
    if "exemplars" not in visual:
        raise ValueError("prompt: missing, empty or whitespace, and the job has no default prompt (--prompt); "
                         "or give objects")
    return prompts


def _visual(raw: dict) -> dict:
    """The line's objects and exemplars as lists (a CSV cell holds JSON); the spec checks each entry."""
    out = {}
    for key in VISUAL_FIELDS:
        value = raw.get(key)
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError as err:
                raise ValueError(f"{key}: not valid JSON ({getattr(err, 'msg', err)})") from None
        if value is None:
            continue
        if not isinstance(value, list):
            raise ValueError(f"{key}: must be a JSON array of entries, not {type(value).__name__}")
        if value:
            out[key] = value
    return out


def _size_problem(spec: VideoSpec) -> str | None:
    """Why the video's request is too large to keep in Redis; None when it is not."""
    total = 0
    for i, obj in enumerate(spec.objects):
        total += len(obj.mask.counts) if obj.mask is not None else 0
        if total > MAX_MASK_BYTES:
            return f"objects[{i}].mask: the mask prompts up to here hold {total} bytes of RLE, at most {MAX_MASK_BYTES} per video"
    size = len(spec.model_dump_json(exclude={"objects": {"__all__": {"mask"}}}))
    if size > MAX_ITEM_BYTES:
        return (f"the line is {size} bytes once read (mask prompts aside); a video's request is at most "
                f"{MAX_ITEM_BYTES} (a very long video URL?)")
    return None


def _unknown(kind: str, name: str) -> str:
    """"unknown field/column X" with what fixes it: the comma a CSV needs, or the field meant."""
    for sep, called in ((";", "';'"), ("\t", "a tab"), ("|", "'|'")):
        parts = [p.strip() for p in name.split(sep)]
        if len(parts) > 1 and any(p in FIELDS for p in parts):
            return (f"unknown {kind} {name!r}: the header looks separated by {called}; a CSV manifest is "
                    "comma-separated (id,video,prompt)")
    close = difflib.get_close_matches(name, sorted(FIELDS), n=1, cutoff=0.6)
    return f"unknown {kind} {name!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def _item(raw: dict, line: int, default_prompt: str | None, allow_local: bool, max_prompts: int,
          allow_storage: bool) -> VideoSpec:
    unknown = sorted(set(raw) - FIELDS)
    if unknown:
        raise ValueError(_unknown("field", unknown[0]))
    raw = {k: v for k, v in raw.items() if v is not None}  # JSON null: as if absent
    if "video" in raw and "input_video" in raw:
        raise ValueError("give video or input_video, not both")
    video = _check_video(raw.get("video", raw.get("input_video")), allow_local, allow_storage)
    vid = raw.get("id")
    if vid is None or vid == "":
        vid = _default_id(line, video)
    elif not isinstance(vid, str):
        raise ValueError(f"id: must be a string, not {type(vid).__name__}")
    elif not _ID.fullmatch(vid) or vid in (".", ".."):
        raise ValueError(f"id: {vid!r} is not safe as a storage key (letters, digits, '.', '_', '-'; at most 128)")
    # lower: a case-insensitive file system (macOS) clashes too
    elif vid.lower() in RESERVED_VIDEO_IDS or is_report_name(vid.lower()):
        raise ValueError(f"id: {vid!r} is a name the job's folder uses itself "
                         f"({', '.join(sorted(RESERVED_VIDEO_IDS))}); choose another id")
    fields = {k: v for k, v in raw.items() if k in OPTION_FIELDS}
    if isinstance(fields.get("outputs"), str):
        fields["outputs"] = [o.strip() for o in re.split(r"[,|]", fields["outputs"]) if o.strip()]
    visual = _visual(raw)
    try:
        spec = VideoSpec(id=vid, video=video, prompts=_prompts(raw, default_prompt, max_prompts, visual),
                         line=line, **visual, **fields)
    except ValidationError as err:
        field, message = first_error(err)
        raise ValueError(f"{field}: {message}") from None
    if problem := too_many(len(spec.prompts), spec.objects, spec.exemplars, max_prompts):
        raise ValueError(f"{problem[0]}: {problem[1]}")
    if problem := _size_problem(spec):
        raise ValueError(problem)
    return spec


def _jsonl_rows(lines: Iterable[str]):
    for number, raw_line in enumerate(lines, start=1):
        if not raw_line.strip():
            continue
        try:
            row = json.loads(raw_line)
        except ValueError as err:
            yield number, None, f"not valid JSON ({err.msg})"
            continue
        if not isinstance(row, dict):
            yield number, None, "not a JSON object"
            continue
        yield number, row, None


def _csv_rows(lines: Iterable[str]):
    reader = csv.DictReader(lines)
    if not reader.fieldnames:
        return
    unknown = [f for f in reader.fieldnames if f not in FIELDS]
    for row in reader:
        number = reader.line_num
        if unknown:
            yield number, None, _unknown("column", unknown[0])
            continue
        if None in row:
            yield number, None, "more cells than header columns"
            continue
        clean = {k: v for k, v in row.items() if v not in (None, "")}
        if not clean:
            continue
        for key in ("max_frames", "chunk_frames", "start_frame"):
            if key in clean and re.fullmatch(r"-?\d+", clean[key].strip()):
                clean[key] = int(clean[key])
        for key in ("mask_opacity", "detection_threshold"):
            if key in clean:
                try:
                    clean[key] = float(clean[key])
                except ValueError:
                    pass  # left a string: the field's validation names it
        for key in ("apply_mask", "labels"):
            if key in clean:
                flag = clean[key].strip().lower()
                clean[key] = {"true": True, "1": True, "yes": True, "false": False, "0": False,
                              "no": False}.get(flag, clean[key])
        yield number, clean, None


def _is_csv(name: str, first_char: str) -> bool:
    """CSV by the name's extension, else by content: JSONL starts with ``{``."""
    lowered = name.lower()
    return lowered.endswith(".csv") or (first_char not in ("{", "") and not lowered.endswith((".jsonl", ".json")))


def _check_default_prompt(default_prompt: str | None) -> None:
    if default_prompt is not None and not default_prompt.strip():
        raise InputError("--prompt: empty or whitespace")
    if default_prompt is not None and (problem := prompt_problem(default_prompt.strip())):
        raise InputError(f"--prompt: {problem}")


def manifest_entries(lines: Iterable[str], name: str, first_char: str, default_prompt: str | None = None,
                     allow_local: bool = False, max_prompts: int = DEFAULT_MAX_PROMPTS, *,
                     allow_storage: bool = False) -> Iterator[VideoSpec | Rejected]:
    """Each line's outcome, in line order, read lazily from ``lines`` (text lines, ends kept, as a
    file opened with ``newline=""`` gives them). Ids repeated across lines are the caller's to find:
    ``parse_manifest`` keeps them in memory, the producer asks Redis (memory flat in manifest size)."""
    rows = _csv_rows(lines) if _is_csv(name, first_char) else _jsonl_rows(lines)
    for number, row, problem in rows:
        entry: VideoSpec | Rejected | None = None
        if problem is None:
            try:
                entry = _item(row, number, default_prompt, allow_local, max_prompts, allow_storage)
            except ValueError as err:
                problem = str(err)
        yield entry if entry is not None else Rejected(line=number, reason=problem, video=_named_input(row))


def _named_input(row: dict | None) -> str | None:
    value = (row or {}).get("video", (row or {}).get("input_video"))
    return value if isinstance(value, str) else None


def parse_manifest(data: bytes, name: str, default_prompt: str | None = None, allow_local: bool = False,
                   max_prompts: int = DEFAULT_MAX_PROMPTS, *, allow_storage: bool = False) -> ManifestResult:
    """Every line checked; ``max_prompts``: the deployment's SAM3V_MAX_PROMPTS (the caller's settings).
    ``allow_local``: local paths (embedded ``sam3v run`` only). ``allow_storage``: ``storage:`` keys,
    for a line the API wrote itself (an upload): a caller naming our storage could read any job's
    results. The whole manifest in memory: for a small one (an API request, a test); ``sam3v
    submit`` streams (``scan_manifest`` + ``read_manifest``)."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise InputError(f"{name}: not UTF-8 text ({err})") from None
    _check_default_prompt(default_prompt)
    items: list[VideoSpec] = []
    rejected: list[Rejected] = []
    seen: dict[str, int] = {}
    for entry in manifest_entries(io.StringIO(text, newline=""), name, text.lstrip()[:1], default_prompt,
                                  allow_local, max_prompts, allow_storage=allow_storage):
        if isinstance(entry, VideoSpec) and entry.id in seen:
            entry = Rejected(line=entry.line, reason=f"id: {entry.id!r} repeats line {seen[entry.id]}")
        if isinstance(entry, Rejected):
            rejected.append(entry)
        else:
            seen[entry.id] = entry.line
            items.append(entry)
    return ManifestResult(items=items, rejected=rejected)


# --- streaming: a manifest of any size read in constant memory ----------------------------------
READ_BYTES = 1 << 20


@dataclass(frozen=True)
class ManifestScan:
    """What one streaming pass over the bytes tells before any line is parsed."""
    digest: str  # manifest_digest(data + default prompt), as the idempotency key compares it
    first_char: str  # the first non-blank character ("" for an empty manifest): CSV or JSONL


def _open_binary(source: bytes | Path):
    return io.BytesIO(source) if isinstance(source, bytes) else open(source, "rb")


def scan_manifest(source: bytes | Path, name: str, default_prompt: str | None = None) -> ManifestScan:
    """Digest and UTF-8 check of the whole manifest, a megabyte at a time: a manifest that is not
    text is refused before anything of it is recorded or enqueued."""
    _check_default_prompt(default_prompt)
    digest = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8-sig")()
    first_char, offset = "", 0
    with _open_binary(source) as f:
        while True:
            block = f.read(READ_BYTES)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as err:
                raise InputError(f"{name}: not UTF-8 text (byte {offset + max(0, err.start)}: {err.reason})") from None
            if not block:
                break
            digest.update(block)
            offset += len(block)
            if not first_char:
                first_char = text.lstrip()[:1]
    digest.update((default_prompt or "").encode())
    return ManifestScan(digest.hexdigest(), first_char)


@contextmanager
def read_manifest(source: bytes | Path, name: str, scan: ManifestScan, default_prompt: str | None = None,
                  allow_local: bool = False, max_prompts: int = DEFAULT_MAX_PROMPTS) -> Iterator[Iterator[VideoSpec | Rejected]]:
    """``manifest_entries`` over a file (or bytes) read line by line: nothing but the current line
    is held. ``scan``: from ``scan_manifest`` of the same source."""
    with _open_binary(source) as binary:
        text: TextIO = io.TextIOWrapper(binary, encoding="utf-8-sig", newline="")
        yield manifest_entries(text, name, scan.first_char, default_prompt, allow_local, max_prompts)


def _locate(location: str, storage_factory=None):
    """(storage, key) for ``s3://bucket/key``, (None, path) for a local file."""
    try:
        uri = parse_uri(location)
    except BadUri as err:
        raise InputError(f"manifest: {err}") from None
    if uri.scheme is Scheme.S3:
        if storage_factory is None:
            from pipeline.core.storage import open_storage

            def storage_factory(name: str):
                return open_storage(f"s3://{name}")
        return storage_factory(uri.bucket), uri.key
    if not uri.is_local:
        raise InputError(f"manifest {location}: scheme {uri.scheme.value!r} is not supported "
                         "(s3://bucket/key or a local path)")
    path = Path(uri.path).expanduser()
    if not path.is_file():
        raise InputError(f"no such manifest: {location}")
    return None, path


def load_manifest_bytes(location: str, storage_factory=None) -> bytes:
    """A manifest from a local path or ``s3://bucket/key``. ``storage_factory(bucket)`` gives the
    S3 storage to read it with (default: ``open_storage("s3://bucket")``, boto3's standard chain)."""
    storage, where = _locate(location, storage_factory)
    if storage is None:
        return where.read_bytes()
    try:
        return storage.get_bytes(where)
    except Exception as err:
        raise InputError(f"cannot read manifest {location}: {err}") from None


@contextmanager
def manifest_file(location: str, storage_factory=None) -> Iterator[Path]:
    """A local file holding the manifest, for streaming: the file itself, or an S3 manifest
    downloaded to a temporary file (deleted afterwards) rather than read into memory."""
    storage, where = _locate(location, storage_factory)
    if storage is None:
        yield where
        return
    with tempfile.TemporaryDirectory(prefix="sam3v-manifest-") as tmp:
        path = Path(tmp) / "manifest"
        try:
            storage.get_file(where, path)
        except Exception as err:
            raise InputError(f"cannot read manifest {location}: {err}") from None
        yield path
