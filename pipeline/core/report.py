"""A job's report: ``report.html`` beside ``results.jsonl``, one self-contained page to look at.

Built from the results rows (``pipeline.core.results``) and the three overlay thumbnails the
finalize step stored beside each video's masks.json, embedded as ``data:`` images: the page needs
no network, no server and no other file. Inline CSS and a few lines of inline script (the filter)
only. Every text that came from a user (ids, sources, prompts, errors, the job's name) goes
through ``html.escape``.

Videos that failed (and manifest lines that were rejected) come first, then those that found no
object, then the rest in manifest order: the ones a person must look at are at the top. Beyond
``PAGE_VIDEOS`` videos the report pages: ``report.html``, ``report-2.html``, ... each with the
job's summary and links to the others.
"""

from __future__ import annotations

import base64
import html
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor

from pipeline.core.layout import JobKeys, report_name
from pipeline.core.storage import MissingKey, Storage

log = logging.getLogger(__name__)

PAGE_VIDEOS = 2000
# Sort rank: what needs a look first.
_FAILED, _EMPTY, _CANCELLED, _OTHER = range(4)

Thumbnails = Callable[[dict], list[bytes]]


def attention_rank(row: dict) -> int:
    if row["state"] in ("failed", "rejected"):
        return _FAILED
    if row["state"] == "succeeded" and not row.get("objects"):
        return _EMPTY
    if row["state"] == "cancelled":
        return _CANCELLED
    return _OTHER


def report_order(rows: Iterable[dict]) -> list[dict]:
    return sorted(rows, key=lambda r: (attention_rank(r), r.get("line") or 0, r.get("id") or ""))


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def _image_type(data: bytes) -> str:
    return "image/webp" if data[8:12] == b"WEBP" else "image/jpeg"


def _thumbs(images: list[bytes]) -> str:
    return "".join(f'<img alt="" src="data:{_image_type(b)};base64,{base64.b64encode(b).decode()}">'
                   for b in images)


def _objects(row: dict) -> str:
    per_prompt = row.get("objects_by_prompt")
    if per_prompt:
        return "<br>".join(f"{_e(p)}: {int(n)}" for p, n in per_prompt.items())
    return _e(row.get("objects")) if row.get("objects") is not None else ""


def _row(row: dict, images: list[bytes]) -> str:
    state = row["state"]
    seconds = row.get("seconds")
    fps = f"{row['frames'] / seconds:.1f}" if seconds and row.get("frames") else ""
    error = f'<div class="err">{_e(row["error"])}</div>' if row.get("error") else ""
    empty = "1" if state == "succeeded" and not row.get("objects") else "0"
    return (f'<tr data-state="{_e(state)}" data-empty="{empty}"><td>{_e(row.get("line"))}</td>'
            f'<td class="id">{_e(row.get("id") or "")}<div class="src">{_e(row.get("source"))}</div></td>'
            f'<td><span class="st {_e(state)}">{_e(state)}</span>{error}</td>'
            f'<td class="n">{_e(row.get("frames"))}</td><td>{_objects(row)}</td>'
            f'<td class="n">{_seconds(seconds)}</td><td class="n">{fps}</td>'
            f'<td class="th">{_thumbs(images)}</td></tr>')


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px;color:#222;background:#fafafa}
h1{font-size:20px;margin:0 0 8px}table{border-collapse:collapse;width:100%;background:#fff}
th,td{border-bottom:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#eee;position:sticky;top:0}.n{text-align:right;white-space:nowrap}
.id{word-break:break-all;min-width:170px;max-width:260px}.src{color:#777;font-size:12px}.err{color:#a00;font-size:12px;max-width:360px}
.st{padding:1px 6px;border-radius:8px;background:#ddd}.st.succeeded{background:#cfe8cf}
.st.failed,.st.rejected{background:#f4c7c3}.st.cancelled{background:#eee}
.th{white-space:nowrap}.th img{height:72px;margin-right:3px;border:1px solid #ccc}.summary span{margin-right:14px}
nav a{margin-right:8px}tr[hidden]{display:none}
"""

_SCRIPT = """
document.getElementById('filter').onchange=function(){var f=this.value;
document.querySelectorAll('tbody tr').forEach(function(r){var s=r.dataset.state;
r.hidden=!(f==='all'||(f==='empty'?r.dataset.empty==='1':f==='failed'?(s==='failed'||s==='rejected'):s===f));});};
"""


def _summary(job: dict, rows: list[dict]) -> str:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    empty = sum(1 for r in rows if attention_rank(r) == _EMPTY)
    frames = sum(r.get("frames") or 0 for r in rows if r["state"] == "succeeded")
    created, updated = job.get("created"), job.get("updated")
    wall = updated - created if created and updated else None
    parts = [f"<span>status <b>{_e(job.get('status'))}</b></span>", f"<span>{len(rows)} lines</span>"]
    parts += [f"<span>{_e(state)} <b>{n}</b></span>" for state, n in sorted(counts.items())]
    parts.append(f"<span>no objects <b>{empty}</b></span>")
    parts.append(f"<span>{frames} frames</span>")
    if created:
        parts.append(f"<span>started {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime(created))}</span>")
    if wall is not None:
        parts.append(f"<span>took {_seconds(wall)}</span>")
        if wall > 0 and frames:
            parts.append(f"<span>{frames / wall:.1f} frames/s</span>")
    return '<p class="summary">' + "".join(parts) + "</p>"


def _nav(page: int, pages: int) -> str:
    if pages < 2:
        return ""
    links = [f"<b>{n}</b>" if n == page else f'<a href="{report_name(n)}">{n}</a>' for n in range(1, pages + 1)]
    return "<nav>pages " + "".join(links) + "</nav>"


def report_pages(job: dict, rows: list[dict], thumbnails: Thumbnails,
                 page_videos: int = PAGE_VIDEOS) -> Iterator[tuple[str, bytes]]:
    """(file name, HTML) of each page, ``page_videos`` rows a page, made one at a time (a page's
    thumbnails are read when it is made); ``thumbnails(row)`` gives a row's images (JPEG or WebP
    bytes; none for a video that has none)."""
    ordered = report_order(rows)
    pages = max(1, -(-len(ordered) // page_videos))
    title = f"sam3v job {_e(job.get('id'))}" + (f" \u2014 {_e(job['name'])}" if job.get("name") else "")
    summary = _summary(job, rows)
    for page in range(1, pages + 1):
        chunk = ordered[(page - 1) * page_videos:page * page_videos]
        body = "".join(_row(row, thumbnails(row)) for row in chunk)
        nav = _nav(page, pages)
        document = (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
            f"<style>{_STYLE}</style></head><body><h1>{title}</h1>{summary}{nav}"
            '<p><label>show <select id="filter"><option value="all">all</option>'
            '<option value="failed">failed</option><option value="empty">no objects</option>'
            '<option value="succeeded">succeeded</option><option value="cancelled">cancelled</option>'
            "</select></label></p><table><thead><tr><th>line</th><th>video</th><th>state</th>"
            "<th>frames</th><th>objects</th><th>time</th><th>frames/s</th><th>first, middle, last</th>"
            f"</tr></thead><tbody>{body}</tbody></table>{nav}<script>{_SCRIPT}</script></body></html>"
        )
        yield report_name(page), document.encode()


def stored_thumbnails(storage: Storage, job_id: str, pool: ThreadPoolExecutor) -> Thumbnails:
    """Reads a row's thumbnails from ``storage`` (beside its masks.json), in ``pool`` (S3 answers
    slowly, one GET at a time): a missing one (deleted since) is left out of the page, not an error."""

    def read(key: str) -> bytes | None:
        try:
            return storage.get_bytes(key)
        except MissingKey as err:
            log.info("report of job %s: thumbnail %s not read (%s)", job_id, key, err)
            return None

    def thumbnails(row: dict) -> list[bytes]:
        if not row.get("id") or not row.get("thumbnails"):
            return []
        keys = [JobKeys(job_id).video(row["id"]).thumbnail(n) for n in range(len(row["thumbnails"]))]
        return [data for data in pool.map(read, keys) if data]

    return thumbnails


def write_report(storage: Storage, job: dict, rows: list[dict], page_videos: int = PAGE_VIDEOS) -> list[str]:
    """The job's report pages beside its results.jsonl; returns their URIs (report.html first).
    ``job``: the status document's job fields (id, name, status, created, updated)."""
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="report") as pool:
        pages = report_pages(job, rows, stored_thumbnails(storage, job["id"], pool), page_videos)
        return [storage.put_bytes(page, JobKeys(job["id"]).report(n)) for n, (_, page) in enumerate(pages, start=1)]
