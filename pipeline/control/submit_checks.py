"""What `sam3v submit` checks before it enqueues: do the manifest's S3 inputs exist, and do the
workers that will run the job write where this submitter thinks they do?

Inputs: a HEAD on the first ``SAMPLE`` s3:// inputs (``--check-inputs all``: every one, ``THREADS``
at a time). All of them missing means a wrong bucket or prefix: the job is refused. Some missing:
one warning per line (the probe task still fails each such video with its reason).

Storage: workers publish their storage settings in Redis (``pipeline.core.worker_registry``). The
submitter's own SAM3V_STORAGE_URL / AWS_ENDPOINT_URL is not where results go: a difference means
the user will look for results in the wrong place. It warns, and refuses only with ``--strict``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

from pipeline.core import worker_registry
from pipeline.core.celery_app import queue_for
from pipeline.core.errors import InputError
from pipeline.core.settings import Settings
from pipeline.core.specs import VideoSpec
from pipeline.core.uris import BadUri, Scheme, parse_uri

SAMPLE = 20
THREADS = 16
CheckInputs = Literal["sample", "all", "none"]


class Line(Protocol):
    line: int
    video: str


@dataclass(frozen=True)
class Input:
    line: int
    uri: str
    bucket: str
    key: str


def s3_inputs(entries: Iterable[Line]) -> Iterable[Input]:
    """The s3:// inputs among the manifest's accepted lines, lazily."""
    for entry in entries:
        try:
            uri = parse_uri(entry.video)
        except BadUri:
            continue
        if uri.scheme is Scheme.S3:
            yield Input(entry.line, entry.video, uri.bucket, uri.key)


def s3_head(client=None) -> Callable[[Input], bool | None]:
    """True: the object exists; False: it does not (or its bucket does not); None: cannot tell."""
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    client = client or boto3.client("s3")

    def head(item: Input) -> bool | None:
        try:
            client.head_object(Bucket=item.bucket, Key=item.key)
            return True
        except ClientError as err:
            code = err.response.get("Error", {}).get("Code")
            return False if code in ("404", "NoSuchKey", "NotFound", "NoSuchBucket") else None
        except BotoCoreError:
            return None

    return head


def check_inputs(entries: Iterable[Line], mode: CheckInputs, source: str,
                 head: Callable[[Input], bool | None] | None = None) -> list[str]:
    """Warnings, one per missing input; ``InputError`` when every input checked is missing."""
    if mode == "none":
        return []
    inputs = s3_inputs(entries)
    if mode == "sample":
        inputs = itertools.islice(inputs, SAMPLE)
    head = head or s3_head()
    checked, missing, unknown = 0, [], 0
    with ThreadPoolExecutor(THREADS) as pool:
        # In windows, so that a huge manifest is never held whole as futures.
        while window := list(itertools.islice(inputs, THREADS * 16)):
            for item, found in zip(window, pool.map(head, window)):
                checked += 1
                if found is False:
                    missing.append(item)
                elif found is None:
                    unknown += 1
    if missing and len(missing) == checked:
        first = missing[0]
        raise InputError(f"{source}: none of the {checked} s3:// input(s) checked exists (line {first.line}: "
                         f"{first.uri}): a wrong bucket or prefix? Job refused")
    warnings = [f"manifest line {m.line}: {m.uri} does not exist (its video will fail)" for m in missing]
    if unknown:
        warnings.append(f"{unknown} input(s) could not be checked from here (no access or no connection)")
    return warnings


def _serving(workers: list[worker_registry.WorkerRecord], lane: str) -> list[worker_registry.WorkerRecord]:
    queues = {queue_for("cpu", lane), queue_for("gpu", lane)}
    return [w for w in worker_registry.in_service(workers) if queues & set(w.queues)]


def storage_mismatches(settings: Settings, workers: list[worker_registry.WorkerRecord]) -> list[str]:
    """How this submitter's storage settings differ from each worker's (its own SAM3V_STORAGE_URL
    counts only when it was set: the default is a local directory nobody means)."""
    problems = []
    mine = worker_registry.storage_endpoint()
    for w in workers:
        if "storage_url" in settings.model_fields_set and w.storage_url != settings.storage_url:
            problems.append(f"SAM3V_STORAGE_URL is {settings.storage_url} here, but worker {w.node} writes results "
                            f"to {w.storage_url}: this job's outputs go there")
        elif mine and w.endpoint_url != mine:
            problems.append(f"AWS_ENDPOINT_URL is {mine} here, but worker {w.node} uses "
                            f"{w.endpoint_url or 'the AWS default endpoint'}: this job's outputs go there")
    return list(dict.fromkeys(problems))


def check_storage_settings(settings: Settings, redis_client, strict: bool, lane: str = "batch") -> list[str]:
    """Warnings about the live workers that serve ``lane``; with ``strict`` a mismatch refuses the job."""
    serving = _serving(worker_registry.live_workers(redis_client), lane)
    if not serving:
        return [f"no live worker serves the {lane} queues (none has published itself in Redis): the job "
                "waits until a `sam3v worker` starts"]
    mismatches = storage_mismatches(settings, serving)
    if strict and mismatches:
        raise InputError(f"{mismatches[0]} (--strict)")
    return mismatches


def preflight_submit(settings: Settings, redis_client, data: bytes | Path, source: str, default_prompt: str | None,
                     strict: bool, mode: CheckInputs) -> list[str]:
    """Both checks for `sam3v submit` (``data``: the manifest's bytes or a local file, read line by
    line); returns the warnings to print, or refuses (``InputError``)."""
    from pipeline.control.manifest import read_manifest, scan_manifest

    warnings = check_storage_settings(settings, redis_client, strict)
    scan = scan_manifest(data, source, default_prompt)
    with read_manifest(data, source, scan, default_prompt, max_prompts=settings.max_prompts) as entries:
        # Lines the parser rejects are the producer's to report; only accepted lines name inputs.
        accepted = (e for e in entries if isinstance(e, VideoSpec))
        return warnings + check_inputs(accepted, mode, source)


def check_scheduled_manifest(location: str, default_prompt: str | None, max_prompts: int) -> list[str]:
    """`sam3v schedule add`: the manifest must exist and hold at least one valid line now, or every
    firing would fail at night. Returns a warning per rejected line."""
    from pipeline.control.manifest import load_manifest_bytes, parse_manifest

    result = parse_manifest(load_manifest_bytes(location), location, default_prompt, max_prompts=max_prompts)
    if not result.items:
        first = "; ".join(f"line {r.line}: {r.reason}" for r in result.rejected[:3])
        raise InputError(f"--manifest {location}: no valid video line{': ' + first if first else ''}")
    return [f"--manifest {location} line {r.line}: {r.reason}" for r in result.rejected]
