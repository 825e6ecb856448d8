"""Host-local copies of sources (workers/jobs/sources.py): fetched once, reused, touched, evicted."""

from __future__ import annotations

import functools
import os
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from pipeline.core.errors import InputError
from pipeline.core.settings import Settings
from pipeline.core.storage import LocalStorage
from workers.jobs import sources


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM3V_CACHE", str(tmp_path / "cache"))
    return sources.cache_dir(Settings())


def _age(path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_copy_is_fetched_once_then_reused_and_touched(cache, tmp_path):
    storage = LocalStorage(tmp_path / "store")
    storage.put_bytes(b"video bytes", "job/vid/source")
    settings = Settings(cache_max_age=3600, task_time_limit=60, visibility_timeout=120)
    first = sources.local_source(storage, settings, "storage:job/vid/source", "job", "vid")
    assert first.parent == cache and first.read_bytes() == b"video bytes"
    storage.put_bytes(b"changed", "job/vid/source")
    _age(first, 1000)
    again = sources.local_source(storage, settings, "storage:job/vid/source", "job", "vid")
    assert again == first and again.read_bytes() == b"video bytes", "reused, not fetched again"
    assert time.time() - again.stat().st_mtime < 60, "touched when used"
    assert sources.local_source(storage, settings, "/data/x.mp4", "job", "vid") == Path("/data/x.mp4")


def test_copies_unused_past_the_age_are_evicted_on_the_next_fetch(cache, tmp_path):
    storage = LocalStorage(tmp_path / "store")
    storage.put_bytes(b"new", "job/new/source")
    stale = cache / "old-job__v__source"
    partial = cache / ".old-job__v__x.abc.partial"  # a download killed half way
    recent = cache / "busy-job__v__source"
    for path in (stale, partial, recent):
        path.write_bytes(b"x")
    _age(stale, 5000)
    _age(partial, 5000)
    _age(recent, 1000)
    settings = Settings(cache_max_age=3600, task_time_limit=60, visibility_timeout=120)
    sources.local_source(storage, settings, "storage:job/new/source", "job", "new")
    assert not stale.exists() and not partial.exists()
    assert recent.exists()
    # Never sooner than the task time limit: a running task may still read its copy.
    long_tasks = Settings(cache_max_age=60, task_time_limit=3000, visibility_timeout=4000)
    assert sources.eviction_age(long_tasks) == 3000
    storage.put_bytes(b"other", "job/other/source")
    sources.local_source(storage, long_tasks, "storage:job/other/source", "job", "other")
    assert recent.exists()


def test_a_url_input_is_staged_once_and_this_host_keeps_its_copy(cache, tmp_path):
    www = tmp_path / "www"
    www.mkdir()
    (www / "clip.mp4").write_bytes(b"url bytes")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(www))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        storage = LocalStorage(tmp_path / "store")
        settings = Settings(url_allowlist=[f"127.0.0.1:{server.server_port}"])
        item = {"video": f"http://127.0.0.1:{server.server_port}/clip.mp4"}
        source = sources.stage_source(storage, settings, "job", "vid", item)
    finally:
        server.shutdown()
    assert source == "storage:job/vid/source" and storage.get_bytes("job/vid/source") == b"url bytes"
    (tmp_path / "store" / "job" / "vid" / "source").unlink()  # the host's copy serves without it
    assert sources.local_source(storage, settings, source, "job", "vid").read_bytes() == b"url bytes"
    assert [p.name for p in cache.iterdir()] == ["job__vid__job__vid__source"], "no download left behind"


def test_drop_cached_forgets_one_video_only(cache):
    mine, other = cache / "j__v1__source", cache / "j__v10__source"
    mine.write_bytes(b"a")
    other.write_bytes(b"b")
    sources.drop_cached(Settings(), "j", "v1")
    assert not mine.exists() and other.exists()


def test_a_missing_object_is_an_input_error_naming_it(cache, tmp_path):
    storage = LocalStorage(tmp_path / "store")
    settings = Settings()
    with pytest.raises(InputError, match=r"no longer in storage: .*uploads/u1/c\.mp4: no such key"):
        sources.local_source(storage, settings, "storage:uploads/u1/c.mp4", "job", "vid")
    assert list(cache.iterdir()) == [], "no partial copy left"
