"""Helpers for fault tests, on top of tests/test_pipeline.py's deployment (its module fixtures:
redis-server with AOF ``appendfsync always``, a moto S3 server on 127.0.0.1, the tiny model, the
clips in the bucket).

- ``Worker``: a ``sam3v worker`` subprocess whose prefork child can be found (``pgrep -P``) and killed;
  started with ``count_steps=True`` it logs every tracker step (``tests/step_log``): ``steps()`` says
  which frames went through the model, in which process.
- ``Jobs``: submit a manifest, read a video's entry and its chunks' delivery counts straight from
  Redis (quick enough to catch a chunk between two frames), wait for the job with a bounded wait.
- The faulted manifest (``VIDEOS``: 3 chunks each) and its clean run (``run_clean``); ``seeds``
  draws a moment (video, chunk, frame) per seed and ``frozen_mid_chunk`` stops a GPU child there,
  with the proof from the status store that the chunk is under way.
- ``assert_same_outputs``: a faulted run against a clean one: ``masks.json`` byte for byte, the
  videos frame for frame (decoded by the ffmpeg CLI), and exactly the same keys in the bucket; the
  clean run's masks must list objects (equal empty outputs would prove nothing).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from pipeline.core.layout import JobKeys
from pipeline.core.planning import Chunk, plan_chunks
from pipeline.core.status import StatusStore
from tests.guards import assert_found_objects
from tests.services import start_worker, stop_process
from tests.test_pipeline import (
    BUCKET,
    CHUNK,
    FRAMES,
    cli,
    line,
    wait_terminal,
    write_manifest,
)

RESULTS = "results"  # the storage prefix of test_pipeline's env (s3://BUCKET/results)
VIDEOS = ["dog", "bedroom"]  # clips test_pipeline's ``clips`` fixture put in the bucket
CHUNKS = plan_chunks(FRAMES, CHUNK)  # 3 chunks a video
FILES = ("masks.json", "overlay.mp4")  # a video's outputs with the default options
# A faulted job must finish within this; a clean run of VIDEOS takes ~30-60 s on a busy 2-core box.
FINISH_TIMEOUT = 240
STEP_LOG_HOOK = Path(__file__).resolve().parent / "step_log"  # a sitecustomize: see its docstring


def wait_for(condition: Callable[[], object], timeout: float, what: Callable[[], str], poll: float = 0.02):
    """``condition()``'s first truthy value; fails with ``what()`` after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"gave up after {timeout:.0f} s: {what()}")


def _alive(pid: int) -> bool:
    """Running (a zombie its parent has not reaped yet counts as dead)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@dataclass
class Worker:
    proc: subprocess.Popen
    log: Path
    step_log: Path | None = None

    @classmethod
    def start(cls, env: dict, queues: str, name: str, logs: Path, *extra: str, count_steps: bool = False) -> Worker:
        log = logs / f"{name}.log"
        step_log = logs / f"{name}.steps" if count_steps else None
        if step_log:
            path = os.pathsep.join(p for p in (str(STEP_LOG_HOOK), env.get("PYTHONPATH", "")) if p)
            env = {**env, "PYTHONPATH": path, "SAM3V_TEST_STEP_LOG": str(step_log)}
        return cls(start_worker(env, queues, name, log, *extra), log, step_log)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def children(self) -> list[int]:
        done = subprocess.run(["pgrep", "-P", str(self.pid)], capture_output=True, text=True)
        return [int(p) for p in done.stdout.split() if _alive(int(p))]

    def child(self, timeout: float = 120) -> int:
        """The pid of the one prefork child (``--concurrency 1``) once there is exactly one."""
        found = wait_for(lambda: (kids := self.children()) and len(kids) == 1 and kids, timeout,
                         lambda: f"worker {self.pid} has children {self.children()}\n{self.tail()}", poll=0.1)
        return found[0]

    def kill(self, pid: int, sig: int) -> None:
        """Signal one of this worker's processes and wait until it is gone."""
        os.kill(pid, sig)
        wait_for(lambda: not _alive(pid), 30, lambda: f"process {pid} still alive after signal {sig}")

    def text(self) -> str:
        """Everything the worker (master and children) has logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 3000) -> str:
        return f"--- {self.log.name} (last {chars} chars) ---\n{self.text()[-chars:]}"

    def log_count(self, needle: str) -> int:
        return self.text().count(needle)

    def steps(self) -> list[tuple[int, int]]:
        """(pid, model frame) of every tracker step this worker's processes ran so far, in order."""
        assert self.step_log, "started without count_steps"
        text = self.step_log.read_text() if self.step_log.exists() else ""
        return [(int(pid), int(frame)) for pid, frame in (row.split() for row in text.splitlines())]

    def stop(self) -> None:
        stop_process(self.proc)


@dataclass
class Jobs:
    """The job side of a deployment: ``env`` (test_pipeline's), its Redis and its S3 client."""

    env: dict
    redis_url: str
    s3: object
    workdir: Path

    @property
    def store(self) -> StatusStore:
        return StatusStore(redis.Redis.from_url(self.redis_url))

    def submit(self, video_ids: list[str], prompt: str = "dog", objects: list[dict] | None = None) -> str:
        """One job over clips already in the bucket (``inputs/{id}.mp4``); returns its id.
        ``objects``: visual prompts given to every video (manifest field ``objects``)."""
        lines = [line(f"s3://{BUCKET}/inputs/{vid}.mp4", vid) for vid in video_ids]
        if objects:
            lines = [json.dumps({**json.loads(text), "objects": objects}) for text in lines]
        manifest = write_manifest(self.workdir / f"manifest-{time.monotonic_ns()}.jsonl", lines)
        done = cli(self.env, "submit", manifest, "--prompt", prompt)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1]

    def video(self, job: str, vid: str) -> dict:
        return self.store.video(job, vid)

    def deliveries(self, job: str, vid: str) -> dict[int | str, int]:
        """How many times each chunk's task started (the Redis hash ``sam3v:deliveries:{job}:{vid}``):
        by chunk index, and by ``"b<k>"`` for the backward pass's chunk k."""
        raw = redis.Redis.from_url(self.redis_url).hgetall(f"sam3v:deliveries:{job}:{vid}")
        return {int(k) if k.isdigit() else k.decode(): int(v) for k, v in raw.items()}

    def wait_finished(self, job: str, timeout: float, context: Callable[[], str]) -> dict:
        """The job's final status document (``sam3v status --json``); a wait past ``timeout`` fails
        with ``context()`` (worker logs) in its message."""
        try:
            doc = wait_terminal(self.env, job, timeout=timeout)
        except AssertionError as err:
            raise AssertionError(f"{err}\n{context()}") from None
        # The state turns final before the last video's worker writes results.jsonl, then report.html
        # (the job's results URI is recorded at its first probe already: no sign of either file).
        wait_for(lambda: self.exists(JobKeys(job).report()), 60, context)
        return doc

    # --- storage ------------------------------------------------------------------------------
    def keys(self, job: str) -> set[str]:
        """Every key the job left in the bucket, relative to the job's folder."""
        prefix = f"{RESULTS}/{job}/"
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
        return {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}

    def read(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=BUCKET, Key=f"{RESULTS}/{key}")["Body"].read()

    def exists(self, key: str) -> bool:
        return bool(self.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{RESULTS}/{key}").get("KeyCount"))

    def expected_keys(self, job: str, video_ids: list[str], files: tuple[str, ...]) -> set[str]:
        """What a finished job keeps: its index, its report, each video's output ``files`` and the
        thumbnails its results.jsonl line lists (1 to 3), nothing else."""
        root = JobKeys(job)
        rel = len(job) + 1
        rows = {r["id"]: r for r in map(json.loads, self.read(root.results).decode().splitlines())}
        thumbs = {root.video(v).thumbnail(n)[rel:] for v in video_ids for n in range(len(rows[v]["thumbnails"]))}
        return ({root.results[rel:], root.report()[rel:]} | thumbs
                | {root.video(v).output(f)[rel:] for v in video_ids for f in files})


def decoded_frames(data: bytes, workdir: Path, name: str) -> bytes:
    """A video's frames as raw rgb24 bytes, decoded by the ffmpeg CLI (not our own decoder)."""
    path = workdir / name
    path.write_bytes(data)
    return subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
                          capture_output=True, check=True).stdout


_FRAMES: dict[str, str] = {}  # SHA-256 of a file -> SHA-256 of its decoded frames ("" when it has none)


def frames_digest(data: bytes, workdir: Path, name: str) -> str:
    """SHA-256 of ``decoded_frames(data)``, "" when there are none. Each distinct file is decoded
    once: a module's clean run is compared with every faulted run, and an output equal to the clean
    run's byte for byte is the same file (each decode is an ffmpeg process: 0.3 s or more on a
    loaded host, 16 of them a comparison)."""
    key = hashlib.sha256(data).hexdigest()
    if key not in _FRAMES:
        frames = decoded_frames(data, workdir, name)
        _FRAMES[key] = hashlib.sha256(frames).hexdigest() if frames else ""
    return _FRAMES[key]


def assert_same_outputs(jobs: Jobs, clean: str, job: str, video_ids: list[str]) -> None:
    """``job``'s outputs equal ``clean``'s: the same keys, ``masks.json`` byte for byte, the videos
    frame for frame."""
    clean_keys = jobs.keys(clean)
    for vid in video_ids:
        assert_found_objects(json.loads(jobs.read(f"{clean}/{vid}/masks.json")))
    assert jobs.keys(job) == clean_keys, "a faulted run leaves exactly the keys of a clean run"
    for rel in sorted(clean_keys):
        vid, _, name = rel.partition("/")
        if vid not in video_ids:
            continue  # the job's index: its lines carry times
        want, got = jobs.read(f"{clean}/{rel}"), jobs.read(f"{job}/{rel}")
        if name.endswith(".json"):
            assert got == want, f"{rel}: differs from the clean run's"
        else:
            tag = f"{vid}-{name}"
            frames_want = frames_digest(want, jobs.workdir, f"clean-{tag}")
            frames_got = frames_digest(got, jobs.workdir, f"{job}-{tag}")
            assert frames_want and frames_got == frames_want, f"{rel}: frames differ from the clean run's"



# The worker writes a video's frames_done at most every 2 s (workers/jobs/chunk_watch.py, progress_reporter), and at
# once on the first frame of each chunk task. A process stopped for longer than that reports at once
# on its next frame: that is how freeze_in_chunk steps a chunk frame by frame.
REPORT_INTERVAL = 2.0


def freeze_in_chunk(jobs: Jobs, pid: int, job: str, vid: str, chunk: Chunk, frames_in: int,
                    timeout: float = 120, before: tuple[int, int] | None = None) -> dict:
    """Stop process ``pid`` (SIGSTOP) once video ``vid`` has put ``frames_in`` frames of ``chunk``
    through the model (1 <= frames_in < chunk length); returns the video's entry, read while the
    process is stopped: frames_done = base + frames_in, and the chunk not done. The caller
    kills the process or continues it (SIGCONT). ``before``: (chunks_done, frames_done) when the
    chunk starts, if not (chunk.index, chunk.start) (a backward pass's chunk runs after others)."""
    assert 1 <= frames_in < chunk.stop - chunk.start, f"frames_in {frames_in} is not inside {chunk}"
    chunks_before, base = before or (chunk.index, chunk.start)

    def reported(at_least: int) -> dict | None:
        entry = jobs.video(job, vid)
        done = entry.get("chunks_done") or 0
        assert done <= chunks_before, f"chunk {chunk} of {vid} finished before the fault landed: {entry}"
        frames = entry.get("frames_done") or 0
        return entry if done == chunks_before and frames >= base + at_least else None

    wait_for(lambda: reported(1), timeout, lambda: f"{vid} never started chunk {chunk.index}: {jobs.video(job, vid)}",
             poll=0.005)
    os.kill(pid, signal.SIGSTOP)
    seen = time.monotonic()
    entry = reported(1)
    while entry["frames_done"] < base + frames_in:
        # Let the report interval run out while stopped (no other signal tells), then step one frame.
        time.sleep(max(0.0, seen + REPORT_INTERVAL + 0.1 - time.monotonic()))
        target = entry["frames_done"] + 1
        os.kill(pid, signal.SIGCONT)
        entry = wait_for(lambda: reported(target - base), 60,
                         lambda: f"{vid} did not reach frame {target}: {jobs.video(job, vid)}", poll=0.005)
        os.kill(pid, signal.SIGSTOP)
        seen = time.monotonic()
    return jobs.video(job, vid)


def moment(seed: int) -> tuple[str, int, int]:
    """(video, chunk index, frames of that chunk through the model) drawn from ``seed``: a frame
    strictly inside the chunk, at most 3 in (each step of ``freeze_in_chunk`` takes 2 s)."""
    rng = random.Random(seed)
    vid, chunk = rng.choice(VIDEOS), rng.choice(CHUNKS)
    return vid, chunk.index, rng.randint(1, min(3, chunk.stop - chunk.start - 1))


def seeds(ci: list[int], more: list[int]) -> list:
    """``ci`` run by default, ``more`` only with ``-m faults_more``; ids name each seed's moment."""
    def param(seed: int, *marks):
        vid, k, frames_in = moment(seed)
        return pytest.param(seed, marks=marks, id=f"seed{seed}-{vid}-chunk{k}-frame{CHUNKS[k].start + frames_in}")

    return [param(s) for s in ci] + [param(s, pytest.mark.faults_more) for s in more]


def frozen_mid_chunk(jobs: Jobs, worker: Worker, job: str, seed: int) -> tuple[str, int, int]:
    """Stop ``worker``'s child between two frames of the seed's chunk; returns (video, chunk, child pid)
    after proving from the status store that the chunk is under way and unfinished."""
    vid, k, frames_in = moment(seed)
    chunk = CHUNKS[k]
    child = worker.child()
    frozen = freeze_in_chunk(jobs, child, job, vid, chunk, frames_in)
    assert frozen["chunks_done"] == k and frozen["frames_done"] == chunk.start + frames_in, frozen
    assert chunk.start < frozen["frames_done"] < chunk.stop, frozen
    assert not jobs.exists(f"{job}/{vid}/work/chunks/{k:05d}/done.json"), "the chunk had not finished"
    assert jobs.deliveries(job, vid)[k] == 1
    return vid, k, child


def run_clean(jobs: Jobs, logs: Callable[[], str]) -> str:
    """The reference job: ``VIDEOS`` without a fault, each chunk delivered once, the expected keys."""
    job = jobs.submit(VIDEOS)
    doc = jobs.wait_finished(job, FINISH_TIMEOUT, logs)
    assert doc["status"] == "succeeded", doc
    for vid in VIDEOS:
        assert jobs.deliveries(job, vid) == {c.index: 1 for c in CHUNKS}, vid
    assert jobs.keys(job) == jobs.expected_keys(job, VIDEOS, FILES)
    return job


def assert_ends_as_the_clean_run(jobs: Jobs, clean_job: str, job: str, logs: Callable[[], str]) -> dict:
    """Waits for ``job``: every video succeeded, exactly the expected keys, the clean run's outputs."""
    doc = jobs.wait_finished(job, FINISH_TIMEOUT, logs)
    assert doc["status"] == "succeeded", doc
    assert {v["id"]: v["status"] for v in doc["videos"]} == {v: "succeeded" for v in VIDEOS}
    assert jobs.keys(job) == jobs.expected_keys(job, VIDEOS, FILES), "no duplicate or stray outputs"
    assert_same_outputs(jobs, clean_job, job, VIDEOS)
    return doc
