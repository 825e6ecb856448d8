"""Issue 23, items 2-4: an overlay that tells objects apart (outline, labels), the thumbnails the
finalize step makes, and the job's report.html, opened in a real headless Chromium."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.layout import is_report_name
from pipeline.core.report import report_order, report_pages
from pipeline.core.specs import VideoOptions
from tests import media
from workers.media.composite import FILL, OverlayStyle, edge_mask, outline_width, overlay
from workers.media.labels import outline_color
from workers.media.palette import color_for

# --- the overlay's styles ---------------------------------------------------------------------

H, W = 120, 200


def _scene(seed: int = 0) -> tuple[np.ndarray, list[int], np.ndarray]:
    """A textured frame and two objects: a disc and a rectangle that touches the frame's edge."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    yy, xx = np.mgrid[:H, :W]
    disc = (yy - 60) ** 2 + (xx - 60) ** 2 < 30 ** 2
    rect = np.zeros((H, W), dtype=bool)
    rect[70:, 140:] = True
    return rgb, [3, 7], np.stack([disc, rect])


def _reference_fill(rgb: np.ndarray, ids: list[int], masks: np.ndarray, opacity: float) -> np.ndarray:
    """The overlay as it was before styles (issue 23): ``src * (1 - a) + color * a`` on the mask."""
    out = rgb.copy()
    weight = int(round(opacity * 256))
    for obj_id, mask in zip(ids, masks):
        tint = np.asarray(color_for(obj_id), dtype=np.uint16) * weight + 128
        blended = ((out.astype(np.uint16) * (256 - weight) + tint) >> 8).astype(np.uint8)
        out[mask] = blended[mask]
    return out


def test_the_default_style_is_todays_fill_byte_for_byte():
    rgb, ids, masks = _scene()
    for opacity in (0.5, 0.3, 1.0):
        expected = _reference_fill(rgb, ids, masks, opacity)
        assert np.array_equal(overlay(rgb, ids, masks, opacity), expected)
        assert np.array_equal(overlay(rgb, ids, masks, opacity, style=OverlayStyle.of("fill", False)), expected)
    assert VideoOptions().overlay_style == "fill" and VideoOptions().labels is False
    assert OverlayStyle.of(VideoOptions().overlay_style, VideoOptions().labels) == FILL and FILL.plain


def test_the_outline_differs_only_along_each_objects_edge():
    rgb, ids, masks = _scene()
    drawn = overlay(rgb, ids, masks, style=OverlayStyle.of("outline"))
    changed = (drawn != rgb).any(axis=2)
    t = outline_width(H, W)
    edges = [edge_mask(m, t) for m in masks]
    near = np.logical_or.reduce(edges)
    assert changed.any() and not (changed & ~near).any(), "a pixel away from the edges changed"
    for obj_id, mask, edge in zip(ids, masks, edges):
        assert (drawn[edge] == color_for(obj_id)).all(), "the outline is the object's colour, opaque"
        inner = mask & ~edge
        assert inner.any() and np.array_equal(drawn[inner], rgb[inner]), "the inside is left as it was"
    # Thickness t: the disc's centre row crosses its edge twice, t pixels each.
    row = edges[0][60]
    assert row.sum() == 2 * t, row.sum()
    # The rectangle touches the frame's bottom and right borders: outlined there too.
    assert edges[1][H - 1, 150] and edges[1][100, W - 1]


def test_both_is_the_fill_with_the_outline_over_it():
    rgb, ids, masks = _scene()
    both = overlay(rgb, ids, masks, style=OverlayStyle.of("both"))
    fill = overlay(rgb, ids, masks)
    edge = np.logical_or.reduce([edge_mask(m, outline_width(H, W)) for m in masks])
    assert np.array_equal(both[~edge], fill[~edge])
    assert not np.array_equal(both[edge], fill[edge])


@pytest.mark.parametrize("background", [0, 255], ids=["dark", "light"])
def test_labels_draw_the_id_in_the_objects_colour_with_a_contrasting_ring(background):
    ids = [1, 5]  # palette: a light orange and a dark purple
    masks = np.zeros((2, 240, 320), dtype=bool)
    masks[0, 100:180, 40:120] = True
    masks[1, 60:200, 200:300] = True
    rgb = np.full((240, 320, 3), background, dtype=np.uint8)
    plain = overlay(rgb, ids, masks, style=OverlayStyle.of("outline"))
    labelled = overlay(rgb, ids, masks, style=OverlayStyle.of("outline", labels=True), prompts=["dog", "cat"])
    changed = (labelled != plain).any(axis=2)
    assert changed.any()
    for obj_id, mask in zip(ids, masks):
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        # The label sits just above the object's box, from its left edge.
        near = np.zeros_like(changed)
        near[max(rows[0] - 30, 0):rows[0] + 1, cols[0]:cols[0] + 80] = True
        here = labelled[near & changed]
        color = np.asarray(color_for(obj_id))
        text = (here == color).all(axis=1).sum()
        ring = (here == outline_color(color_for(obj_id))).all(axis=1).sum()
        assert text >= 15, f"object {obj_id}: {text} text pixels in its colour"
        if outline_color(color_for(obj_id)) != (background,) * 3:  # else it is there, but as the background
            assert ring >= 15, f"object {obj_id}: {ring} pixels of the contrasting outline"
    assert not (changed & (np.mgrid[:240, :320][0] > 200)).any(), "a label pixel far below the objects"
    assert outline_color((255, 187, 120)) == (0, 0, 0) and outline_color((31, 119, 180)) == (255, 255, 255)


def test_labels_of_objects_at_the_same_place_do_not_overlap():
    masks = np.zeros((2, 120, 200), dtype=bool)
    masks[:, 0:60, 0:80] = True  # two boxes from the same corner: the labels would coincide
    masks[1, 30:, :] = False
    rgb = np.zeros((120, 200, 3), dtype=np.uint8)
    drawn = overlay(rgb, [3, 7], masks, style=OverlayStyle(fill=False, labels=True), prompts=["a", "b"])
    rows = [np.flatnonzero((drawn == color_for(i)).all(axis=2).any(axis=1)) for i in (3, 7)]
    assert rows[0].size and rows[1].size and (rows[0].max() < rows[1].min() or rows[1].max() < rows[0].min())


# --- options ------------------------------------------------------------------------------------


def test_a_bad_overlay_style_exits_2_naming_it(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM3V_")}
    done = subprocess.run([sys.executable, "-m", "sam3v.cli", "segment", str(media.DOG), "-p", "dog", "-o",
                           str(tmp_path), "--overlay-style", "nope"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2, done
    assert "--overlay-style nope" in done.stderr and "fill, outline, both" in done.stderr, done.stderr


def test_manifest_and_api_take_the_options_and_name_a_bad_one():
    from pipeline.control.manifest import parse_manifest
    from sam3v.api.schemas import GenerationRequest

    lines = [{"id": "a", "video": "s3://b/a.mp4", "prompt": "x", "overlay_style": "both", "labels": True},
             {"id": "b", "video": "s3://b/b.mp4", "prompt": "x", "overlay_style": "nope"},
             {"id": "c", "video": "s3://b/c.mp4", "prompt": "x", "labels": "yes"},
             {"id": "report-2.html", "video": "s3://b/d.mp4", "prompt": "x"}]
    parsed = parse_manifest("".join(json.dumps(x) + "\n" for x in lines).encode(), "m.jsonl")
    assert [(i.id, i.overlay_style, i.labels) for i in parsed.items] == [("a", "both", True)]
    reasons = [r.reason for r in parsed.rejected]
    assert reasons[0].startswith("overlay_style: unknown overlay style 'nope'"), reasons
    assert reasons[1].startswith("labels: must be true or false"), reasons
    assert "report-2.html" in reasons[2] and is_report_name("report-2.html") and is_report_name("report.html")
    csv = parse_manifest(b"id,video,prompt,overlay_style,labels\na,s3://b/a.mp4,x,outline,true\n", "m.csv")
    assert [(i.overlay_style, i.labels) for i in csv.items] == [("outline", True)], csv.rejected
    req = GenerationRequest(input_video="https://example.com/a.mp4", prompt="x", overlay_style="outline", labels=True)
    assert req.manifest_line()["overlay_style"] == "outline" and req.manifest_line()["labels"] is True
    assert "overlay_style" not in GenerationRequest(input_video="https://e.com/a.mp4", prompt="x").manifest_line()
    with pytest.raises(ValueError, match="overlay_style"):
        GenerationRequest(input_video="https://example.com/a.mp4", prompt="x", overlay_style="nope")


# --- the report's order, escaping and pages ------------------------------------------------------


def _row(line, vid, state, objects=None, error=None, prompts=None):
    return {"line": line, "id": vid, "source": f"s3://b/{vid}.mp4", "state": state, "error": error, "frames": 10,
            "objects": objects, "outputs": {}, "objects_by_prompt": prompts, "thumbnails": [], "seconds": 2.0}


def test_failed_and_empty_videos_come_first_then_manifest_order():
    rows = [_row(1, "a", "succeeded", 2), _row(2, "b", "succeeded", 0), _row(3, "c", "failed", error="x"),
            _row(4, "d", "cancelled"), _row(5, None, "rejected", error="bad"), _row(6, "f", "succeeded", 1)]
    assert [r["line"] for r in report_order(rows)] == [3, 5, 2, 4, 1, 6]


def test_user_text_is_escaped_and_large_jobs_page():
    evil = '<img src=x onerror="alert(1)">'
    rows = [_row(n, f"v{n}", "succeeded", 1, prompts={evil: 1}) for n in range(1, 6)]
    rows[0]["error"] = evil
    pages = list(report_pages({"id": "j", "name": "<script>alert(2)</script>"}, rows, lambda row: [], page_videos=2))
    assert [name for name, _ in pages] == ["report.html", "report-2.html", "report-3.html"]
    for _, page in pages:
        text = page.decode()
        assert "<img src=x" not in text and "<script>alert" not in text
        assert "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in text
        assert 'href="report-2.html"' in text or "<b>2</b>" in text
    assert "&lt;script&gt;alert(2)&lt;/script&gt;" in pages[0][1].decode()
    assert sum(page.count(b"<tr data-state") for _, page in pages) == 5


# --- a real job, its thumbnails and its report in headless Chromium -----------------------------


def _chromium() -> str:
    """Debian's chromium: installed here when missing (root or sudo), skipped only where apt has
    no such package."""
    found = shutil.which("chromium")
    if found:
        return found
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    policy = subprocess.run(["apt-cache", "policy", "chromium"], capture_output=True, text=True)
    if "Candidate:" not in policy.stdout or "Candidate: (none)" in policy.stdout:
        pytest.skip("Debian's chromium package is not available from apt on this machine")
    subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "chromium"], check=True, capture_output=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, timeout=900)
    return shutil.which("chromium") or pytest.fail("apt-get installed chromium but it is not on PATH")


# Appended to a copy of the page: once it has loaded, each image's decoded size and place go into
# the DOM, for --dump-dom to show.
_PROBE = """<script>window.addEventListener('load',function(){var out=[];
document.querySelectorAll('img').forEach(function(i){var r=i.getBoundingClientRect();
out.push([i.complete,i.naturalWidth,i.naturalHeight,Math.round(r.left),Math.round(r.top),
Math.round(r.width),Math.round(r.height)]);});
var p=document.createElement('pre');p.id='probe';p.textContent=JSON.stringify(out);document.body.appendChild(p);});
</script>"""


def _browse(chromium: str, page: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--virtual-time-budget=5000", "--window-size=1400,1000", *args, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def finished_job(media_dir, tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("report-job")
    corrupt = media.random_bytes(media_dir)
    manifest = root / "m.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in [
        {"id": "dog", "video": str(media.DOG), "prompt": "dog", "max_frames": 6, "overlay_style": "both",
         "labels": True},
        {"id": "cups", "video": str(media.REAL_VIDEOS / "02_cups.mp4"), "prompts": ["cup", "<b>bold</b>"],
         "max_frames": 5, "chunk_frames": 3},
        {"id": "bedroom", "video": str(media.BEDROOM), "prompt": "bed", "max_frames": 4, "apply_mask": False},
        {"id": "corrupt", "video": str(corrupt), "prompt": "x"},
        {"id": "missing", "video": str(root / "no-such.mp4"), "prompt": "x"},
    ]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM3V_")}
    done = subprocess.run([sys.executable, "-m", "sam3v.cli", "run", str(manifest), "--out", str(root / "out"),
                           "--model", str(tiny_model_dir), "--name", "<script>alert(3)</script>"],
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 1, done.stderr  # two videos failed
    job = done.stdout.strip().splitlines()[-1]
    return root / "out" / job


def test_finalize_stores_three_small_thumbnails_and_results_list_them(finished_job):
    rows = {r["id"]: r for r in map(json.loads, (finished_job / "results.jsonl").read_text().splitlines())}
    for vid, width, height in (("dog", 1280, 720), ("cups", 1280, 720), ("bedroom", 960, 540)):
        row = rows[vid]
        assert row["state"] == "succeeded", row
        assert 1 <= len(row["thumbnails"]) <= 3, row
        assert row["objects_by_prompt"] and sum(row["objects_by_prompt"].values()) == row["objects"]
        assert row["seconds"] > 0
        for uri in row["thumbnails"]:
            data = Path(uri).read_bytes()
            assert Path(uri).parent == finished_job / vid and len(data) < 12_000, (uri, len(data))
            image = Image.open(io.BytesIO(data))
            assert image.format == "WEBP" and image.width == 160 and abs(image.height - 160 * height / width) <= 1
    assert list(rows["cups"]["objects_by_prompt"]) == ["cup", "<b>bold</b>"]
    assert rows["corrupt"]["state"] == rows["missing"]["state"] == "failed"
    assert rows["missing"]["thumbnails"] == [] and not (finished_job / "missing").exists()


def test_the_report_opens_in_chromium_with_its_thumbnails_failed_first(finished_job, tmp_path):
    chromium = _chromium()
    report = finished_job / "report.html"
    html_text = report.read_text()
    assert "http://" not in html_text and "https://" not in html_text and "<link" not in html_text
    page = tmp_path / "probed.html"
    page.write_text(html_text.replace("</body>", _PROBE + "</body>"))
    dom = _browse(chromium, page, "--dump-dom")
    assert dom.returncode == 0, dom.stderr
    probe = json.loads(re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout).group(1))
    rows = {r["id"]: r for r in map(json.loads, (finished_job / "results.jsonl").read_text().splitlines())}
    assert [r["state"] for r in rows.values()].count("succeeded") == 3, rows
    assert len(probe) == sum(len(r["thumbnails"]) for r in rows.values()) >= 3
    assert all(complete and w == 160 and h > 0 for complete, w, h, *_ in probe), probe

    # The text: every video with its state; a failed one first; user text shown, not run.
    body = re.search(r"<tbody>(.*)</tbody>", dom.stdout, re.S).group(1)
    states = re.findall(r'<tr data-state="(\w+)"', body)
    ids = re.findall(r'<td class="id">([^<]*)<', body)
    assert sorted(zip(ids, states)) == sorted((vid, r["state"]) for vid, r in rows.items())
    assert states[:2] == ["failed", "failed"] and set(ids[:2]) == {"corrupt", "missing"}
    assert "no such file" in body and "&lt;b&gt;bold&lt;/b&gt;" in body and "<b>bold</b>" not in body
    assert "&lt;script&gt;alert(3)&lt;/script&gt;" in dom.stdout

    # The screenshot: each thumbnail's place shows a picture (many colours), not a broken-image icon.
    shot = tmp_path / "shot.png"
    done = _browse(chromium, page, f"--screenshot={shot}")
    assert done.returncode == 0 and shot.is_file(), done.stderr
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    shown = [(x, y, w, h) for *_, x, y, w, h in probe if y + h <= pixels.shape[0]]
    assert shown, probe
    for x, y, w, h in shown:
        region = pixels[y + 2:y + h - 2, x + 2:x + w - 2].reshape(-1, 3)
        assert len(np.unique(region, axis=0)) > 200, f"thumbnail at {x},{y} shows {len(np.unique(region, axis=0))} colours"


def test_sam3v_report_makes_the_page_again(finished_job):
    (finished_job / "report.html").unlink()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SAM3V_")}
    done = subprocess.run([sys.executable, "-m", "sam3v.cli", "report", str(finished_job)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(finished_job / "report.html")
    assert (finished_job / "report.html").read_text().count("<tr data-state") == 5


def test_sam3v_report_of_a_job_in_redis_and_of_one_redis_forgot(tmp_path):
    """`sam3v report JOB` against a real redis-server and local storage: from the job's status
    document while Redis has it, from its results.jsonl in storage once it is forgotten."""
    import redis

    from pipeline.core.layout import JobKeys
    from pipeline.core.results import results_jsonl
    from pipeline.core.status import StatusStore
    from pipeline.core.storage import LocalStorage
    from tests.services import RedisServer

    server = RedisServer(tmp_path / "redis")
    (tmp_path / "redis").mkdir()
    server.start()
    try:
        store = StatusStore(redis.Redis.from_url(server.url))
        items = [{"id": "good", "video": "s3://b/good.mp4", "line": 1}, {"id": "bad", "video": "s3://b/bad.mp4", "line": 2}]
        store.create_job("j1", "nightly", {}, items, [])
        storage = LocalStorage(tmp_path / "data")
        thumb = io.BytesIO()
        Image.fromarray(np.random.default_rng(1).integers(0, 256, (90, 160, 3), dtype=np.uint8)).save(thumb, "WEBP")
        uri = storage.put_bytes(thumb.getvalue(), JobKeys("j1").video("good").thumbnail(0))
        store.update_video("j1", "good", status="succeeded", num_frames=9, num_objects=1, started=100.0, finished=103.0,
                           objects_by_prompt={"dog": 1}, thumbnails=[uri])
        store.update_video("j1", "bad", status="failed", error="no such <file>", started=100.0, finished=100.5)
        env = {**{k: v for k, v in os.environ.items() if not k.startswith("SAM3V_")}, "SAM3V_BROKER_URL": server.url,
               "SAM3V_STORAGE_URL": str(tmp_path / "data"), "SAM3V_CACHE": str(tmp_path / "cache")}

        def report() -> str:
            done = subprocess.run([sys.executable, "-m", "sam3v.cli", "report", "j1"], env=env, capture_output=True,
                                  text=True, timeout=120)
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == str(tmp_path / "data" / "j1" / "report.html")
            return (tmp_path / "data" / "j1" / "report.html").read_text()

        page = report()
        assert page.index('data-state="failed"') < page.index('data-state="succeeded"')
        assert "no such &lt;file&gt;" in page and "dog: 1" in page and "3.0 s" in page and "3.0</td>" in page
        assert page.count("data:image/webp;base64,") == 1 and "nightly" in page

        storage.put_bytes(results_jsonl(store.status_document("j1")), JobKeys("j1").results)
        store.discard_job("j1")
        (tmp_path / "data" / "j1" / "report.html").unlink()
        again = report()
        assert again.index('data-state="failed"') < again.index('data-state="succeeded"')
        assert again.count("data:image/webp;base64,") == 1
    finally:
        server.stop()
