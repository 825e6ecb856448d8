"""Embedded runs (`sam3v run`) can be found again (issue 12): the run says where its job lives,
writes the final status next to the results, and `sam3v status` / `watch` on its id say plainly
that it is an embedded job and show the folder, instead of "no such job"."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from tests import media


def _sam3v(env: dict, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam3v.cli", *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))


def test_an_embedded_job_is_found_in_its_output_folder(dog24, media_dir, tiny_model_dir, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("SAM3V_BROKER_URL", "SAM3V_REDIS_URL")}
    env.update({"SAM3V_CACHE": str(tmp_path / "cache"), "SAM3V_TORCH_THREADS": "1"})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join([
        json.dumps({"id": "good", "video": str(dog24), "max_frames": 4}),
        json.dumps({"id": "bad", "video": str(dog24), "max_frames": "many"}),
        json.dumps({"id": "gone", "video": str(tmp_path / "missing.mp4")}),
        json.dumps({"id": "noise", "video": str(media.random_bytes(media_dir))}),
    ]) + "\n")
    out = tmp_path / "out"
    done = _sam3v(env, "run", manifest, "--out", out, "--prompt", "dog", "--model", tiny_model_dir)
    assert done.returncode == 1, done.stderr  # partial
    job = done.stdout.strip().splitlines()[-1]
    folder = (out / job).resolve()
    assert f"embedded job {job}: results in {folder}" in done.stderr
    saved = json.loads((folder / "status.json").read_text())
    assert saved["status"] == "partial" and saved["counts"]["succeeded"] == 1 and saved["counts"]["failed"] == 2
    assert [r["line"] for r in saved["rejected"]] == [2]
    assert (folder / "results.jsonl").is_file()
    for command in ("status", "watch"):
        asked = _sam3v(env, command, job)
        assert asked.returncode == 2, asked.stderr
        assert f"job {job} is an embedded run (`sam3v run`) (it ended partial)" in asked.stderr
        assert str(folder) in asked.stderr.replace("\n", "")
    unknown = _sam3v(env, "status", "20260101-000000-deadbeef")
    assert unknown.returncode == 2 and "no such job" in unknown.stderr
    assert "sam3v jobs prune" in unknown.stderr and "its results stay in storage" in unknown.stderr
    # `sam3v jobs` lists it, marked as embedded, with its folder (and with no Redis configured at all).
    listed = _sam3v(env, "jobs")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if job in line)
    assert "partial" in row and f"embedded: {folder}" in row, listed.stdout
    as_json = _sam3v(env, "jobs", "--json")
    assert as_json.returncode == 0, as_json.stderr
    [entry] = [j for j in json.loads(as_json.stdout) if j["id"] == job]
    assert entry["embedded"] is True and entry["folder"] == str(folder) and entry["status"] == "partial"
    assert entry["counts"]["succeeded"] == 1 and entry["total"] == 3


def test_jobs_says_when_an_embedded_run_never_wrote_its_state(tmp_path):
    from pipeline.core.settings import Settings
    from sam3v import embedded_jobs

    env = {k: v for k, v in os.environ.items() if k not in ("SAM3V_BROKER_URL", "SAM3V_REDIS_URL")}
    env["SAM3V_CACHE"] = str(tmp_path / "cache")
    # What `sam3v run` records before its first video runs; a run killed then leaves no status.json.
    before = time.time()
    folder = embedded_jobs.record(Settings(cache=tmp_path / "cache"), "20260101-000000-0badc0de", tmp_path / "out",
                                  tmp_path / "m.jsonl")
    after = time.time()
    [entry] = json.loads(_sam3v(env, "jobs", "--json").stdout)
    created = entry.pop("created")
    assert entry == {"id": "20260101-000000-0badc0de", "name": "", "status": embedded_jobs.UNFINISHED, "total": None,
                     "counts": None, "updated": None, "embedded": True, "folder": str(folder)}
    # When it was recorded (ISO 8601 UTC, to the second: such strings sort as the times do).
    assert _iso(before) <= created <= _iso(after), (_iso(before), created, _iso(after))
