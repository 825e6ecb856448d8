"""Every storage key of a job and of its videos, in one place.

::

    {job}/results.jsonl                      the job's index, one line a video
    {job}/report.html, report-2.html...      the job's report (pipeline.core.report), pages of 2,000 videos
    {job}/{video}/source                     a URL input, fetched once and staged for every worker
    {job}/{video}/masks.json                 outputs (OUTPUT_FILES)
    {job}/{video}/overlay.mp4, mask.mp4
    {job}/{video}/thumb-1.webp, -2, -3       overlay thumbnails of the first, middle and last frame with objects
    {job}/{video}/coco.json, ytvis.json, davis.zip, mot.txt, objects/{id}.mkv   exports asked for
    {job}/{video}/work/chunks/{k:05d}/...    a chunk's frames.json, done.json and state/ (the tracker
    {job}/{video}/work/segments/{out}-{g:06d}.mp4   carried to chunk k+1); encoded parts on the grid
    {job}/{video}/work/backward/chunks/{k:05d}/...   the backward pass's chunk k: masks.json, done.json,
                                             state/ (carried to backward chunk k-1)
    uploads/{id}/{name}                      HTTP API uploads (``upload://{id}``)

Keys under ``work/`` keep the names earlier releases wrote ("segments" for encoded parts), so a job
in flight across an upgrade finds what its earlier chunks published.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pipeline.core.storage import join_key

# What a video's outputs are called (API and results) and the file each is stored as.
# ``objects`` is a folder: one ``<object id>.mkv`` per object.
OUTPUT_FILES = {"masks": "masks.json", "overlay": "overlay.mp4", "mask": "mask.mp4", "coco": "coco.json",
                "ytvis": "ytvis.json", "davis": "davis.zip", "mot": "mot.txt", "objects": "objects"}
RESULTS_NAME = "results.jsonl"
STATUS_NAME = "status.json"  # an embedded job's final status document (sam3v run), beside results.jsonl
REPORT_NAME = "report.html"
# A video's thumbnails (first, middle, last frame with objects), beside its masks.json.
THUMBNAIL_FILES = ("thumb-1.webp", "thumb-2.webp", "thumb-3.webp")
UPLOADS = "uploads"
WORK = "work"
# Names a video id may not take: every entry the job folder (or a video folder) has of its own,
# and the temporary names they are written under.
# (Report pages past the first, report-2.html..., are refused by ``is_report_name``.)
RESERVED_VIDEO_IDS = frozenset({RESULTS_NAME, STATUS_NAME, f"{STATUS_NAME}.partial", WORK, UPLOADS, REPORT_NAME})


def report_name(page: int) -> str:
    """The report's file for ``page`` (1-based): report.html, report-2.html, ..."""
    return REPORT_NAME if page == 1 else f"report-{page}.html"


def is_report_name(name: str) -> bool:
    return name == REPORT_NAME or bool(re.fullmatch(r"report-[0-9]+\.html", name))


@dataclass(frozen=True)
class WorkKeys:
    """A video's intermediate artifacts (chunk states, frame logs, encoded parts) under ``prefix``."""

    prefix: str = ""

    def chunk(self, k: int, name: str) -> str:
        return join_key(self.prefix, f"chunks/{k:05d}/{name}")

    def state(self, k: int, name: str) -> str:
        """A file of the tracker state chunk ``k`` hands to chunk ``k + 1``."""
        return self.chunk(k, f"state/{name}")

    def state_dir(self, k: int) -> str:
        return self.chunk(k, "state")

    def done(self, k: int) -> str:
        """Written last by chunk ``k``: its presence means the chunk finished."""
        return self.chunk(k, "done.json")

    def frames(self, k: int) -> str:
        return self.chunk(k, "frames.json")

    def masks(self, k: int) -> str:
        """The backward pass's masks of chunk ``k``'s frames (``backward``'s keys only)."""
        return self.chunk(k, "masks.json")

    @property
    def backward(self) -> WorkKeys:
        """The backward pass's chunks: the same layout under ``backward/`` (state k goes to chunk k - 1)."""
        return WorkKeys(join_key(self.prefix, "backward"))

    def part(self, output: str, g: int) -> str:
        """Encoded part ``g`` (of the fixed grid) of output video ``output``."""
        return join_key(self.prefix, f"segments/{output}-{g:06d}.mp4")


@dataclass(frozen=True)
class VideoKeys:
    job_id: str
    video_id: str

    @property
    def prefix(self) -> str:
        return f"{self.job_id}/{self.video_id}"

    @property
    def work(self) -> WorkKeys:
        return WorkKeys(join_key(self.prefix, WORK))

    @property
    def work_prefix(self) -> str:
        return self.work.prefix

    @property
    def source(self) -> str:
        return join_key(self.prefix, "source")

    def thumbnail(self, n: int) -> str:
        """Thumbnail ``n`` (0: first, 1: middle, 2: last frame with objects)."""
        return join_key(self.prefix, THUMBNAIL_FILES[n])

    def output(self, name: str) -> str:
        """``name`` is an output name (masks, overlay, mask) or its file name."""
        return join_key(self.prefix, OUTPUT_FILES.get(name, name))


@dataclass(frozen=True)
class JobKeys:
    job_id: str

    @property
    def results(self) -> str:
        return f"{self.job_id}/{RESULTS_NAME}"

    def report(self, page: int = 1) -> str:
        return f"{self.job_id}/{report_name(page)}"

    def video(self, video_id: str) -> VideoKeys:
        return VideoKeys(self.job_id, video_id)


def upload_prefix(upload_id: str) -> str:
    return f"{UPLOADS}/{upload_id}"


def upload_key(upload_id: str, filename: str) -> str:
    return f"{upload_prefix(upload_id)}/{filename}"


def output_name(file_or_name: str) -> str:
    """``masks.json`` -> ``masks``; an output name stays as it is."""
    return {v: k for k, v in OUTPUT_FILES.items()}.get(file_or_name, file_or_name)
