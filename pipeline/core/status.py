"""The status collector: job, video and chunk state in Redis, and an event stream.

Everything lives in Redis so it survives restarts of the API, the CLI and the workers; embedded
mode uses an in-process Redis (fakeredis) through the same code. Counts per state move
atomically with each video's transition (a Lua script), so the last video to finish knows it is
the last and writes the job's results index exactly once.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

VIDEO_STATES = ("queued", "processing", "succeeded", "failed", "cancelled")
TERMINAL = ("succeeded", "failed", "cancelled")
FINAL_JOB_STATES = ("succeeded", "partial", "failed", "cancelled")  # a job in one of these has ended
EVENTS = "sam3v:events"
EVENTS_MAXLEN = 100_000

# KEYS: videos hash, counts hash, job hash. ARGV: video id, new state, new JSON, total, now, the
# entry as the caller read it ("" for none). Moves one video to a new state and the counts with it;
# returns 1 when this transition made every video terminal (the job is complete), 0 otherwise, and
# -1 without writing when the entry changed since the caller read it (the caller reads again): a
# merge computed from a stale read must not undo a concurrent change (a retry's new attempt).
_TRANSITION = """
local old = redis.call('HGET', KEYS[1], ARGV[1])
if (old or '') ~= ARGV[6] then return -1 end
local old_state = nil
if old then old_state = cjson.decode(old)['status'] end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
if old_state ~= ARGV[2] then
  if old_state then redis.call('HINCRBY', KEYS[2], old_state, -1) end
  redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
end
redis.call('HSET', KEYS[3], 'updated', ARGV[5])
local done = 0
for _, s in ipairs({'succeeded', 'failed', 'cancelled'}) do
  done = done + tonumber(redis.call('HGET', KEYS[2], s) or '0')
end
if done >= tonumber(ARGV[4]) and old_state ~= ARGV[2] then
  if redis.call('HSETNX', KEYS[3], 'completed', ARGV[5]) == 1 then return 1 end
end
return 0
"""


def _k(*parts: str) -> str:
    return "sam3v:" + ":".join(parts)


def job_status(counts: dict[str, int], total: int, cancelled: bool) -> str:
    done = sum(counts.get(s, 0) for s in TERMINAL)
    if cancelled:
        return "cancelled" if done >= total else "cancelling"
    if done < total:
        return "running" if counts.get("processing", 0) or done else "queued"
    if counts.get("succeeded", 0) == total:
        return "succeeded"
    if counts.get("succeeded", 0):
        return "partial"
    # None succeeded. A retried job is no longer flagged cancelled; its videos still may be: "failed"
    # only when one failed (it read "failed" with 0 failed and 3 cancelled).
    return "failed" if counts.get("failed", 0) else "cancelled"


@dataclass
class JobSummary:
    id: str
    name: str
    status: str
    total: int
    counts: dict[str, int]
    created: float
    updated: float


class StatusStore:
    def __init__(self, redis_client):
        self.r = redis_client
        self._transition = self.r.register_script(_TRANSITION)

    # --- jobs ---------------------------------------------------------------------------------
    def new_job_id(self) -> str:
        return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:8]

    def claim_idempotency(self, key: str, job_id: str, digest: str) -> tuple[str, str]:
        """Returns (job id, manifest digest) of whoever holds ``key``: ours if we got it."""
        stored = f"{job_id}|{digest}"
        if self.r.set(_k("idem", key), stored, nx=True):
            self.r.set(_k("job", job_id, "idem"), key)  # so the key expires with the job (pipeline.core.retention)
            return job_id, digest
        held = self.r.get(_k("idem", key))
        held = held.decode() if isinstance(held, bytes) else held
        other_job, other_digest = held.split("|", 1)
        return other_job, other_digest

    def create_job(self, job_id: str, name: str, spec: dict, items: list[dict], rejected: list[dict]) -> None:
        now = time.time()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(_k("job", job_id), mapping={
            "id": job_id, "name": name, "created": now, "updated": now, "total": len(items),
            "spec": json.dumps(spec), "cancelled": 0,
        })
        for start in range(0, len(items), 1000):
            part = items[start:start + 1000]
            pipe.hset(_k("job", job_id, "items"), mapping={i["id"]: json.dumps(i) for i in part})
            pipe.hset(_k("job", job_id, "videos"), mapping={
                i["id"]: json.dumps({"id": i["id"], "status": "queued", "video": i["video"], "line": i.get("line")})
                for i in part
            })
        if items:
            pipe.hset(_k("job", job_id, "counts"), mapping={"queued": len(items)})
        if rejected:
            pipe.rpush(_k("job", job_id, "rejected"), *[json.dumps(r) for r in rejected])
        pipe.zadd(_k("jobs"), {job_id: now})
        pipe.execute()
        self.event(job_id, "job_created", {"total": len(items), "rejected": len(rejected)})

    def job_exists(self, job_id: str) -> bool:
        return bool(self.r.exists(_k("job", job_id)))

    def job_spec(self, job_id: str) -> dict:
        raw = self.r.hget(_k("job", job_id), "spec")
        return json.loads(raw) if raw else {}

    def item(self, job_id: str, video_id: str) -> dict:
        raw = self.r.hget(_k("job", job_id, "items"), video_id)
        if raw is None:
            raise KeyError(f"job {job_id} has no video {video_id}")
        return json.loads(raw)

    def is_cancelled(self, job_id: str) -> bool:
        return self.r.hget(_k("job", job_id), "cancelled") in (b"1", "1")

    def mark_cancelled(self, job_id: str) -> int:
        self.r.hset(_k("job", job_id), "cancelled", 1)
        n = 0
        for vid, raw in self.r.hgetall(_k("job", job_id, "videos")).items():
            entry = json.loads(raw)
            if entry["status"] in ("queued", "processing"):
                self.update_video(job_id, _s(vid), status="cancelled", error="cancelled by the user")
                n += 1
        self.event(job_id, "job_cancelled", {})
        return n

    # --- videos -------------------------------------------------------------------------------
    def video(self, job_id: str, video_id: str) -> dict:
        raw = self.r.hget(_k("job", job_id, "videos"), video_id)
        return json.loads(raw) if raw else {}

    def update_video(self, job_id: str, video_id: str, fence: int | None = None, **fields) -> bool:
        """Merge ``fields`` into the video's entry; returns True if this completed the job.

        ``fence``: the attempt the caller works for; when the video has moved on to another attempt
        (a retry, a requeue) nothing is written. The read, the checks and the write are one atomic
        step (compare-and-set), so a late writer never undoes a newer change."""
        return self._merge(job_id, video_id, fence, fields) == "completed"

    def _merge(self, job_id: str, video_id: str, fence: int | None, fields: dict, only_if: str | None = None) -> str:
        """"refused", "written" or "completed" (written, and it completed the job). ``only_if``: a
        state the entry must be in."""
        key = _k("job", job_id, "videos")
        while True:
            raw = self.r.hget(key, video_id)
            entry = json.loads(raw) if raw else {}
            if fence is not None and int(entry.get("attempt") or 0) != fence:
                return "refused"  # a task of an earlier attempt: the video was retried since
            if only_if is not None and entry.get("status") != only_if:
                return "refused"
            if entry.get("status") in TERMINAL and fields.get("status") not in (None, "queued") and \
                    fields.get("status") != entry.get("status"):
                return "refused"  # a late message for a video already finished (or cancelled) changes nothing
            entry.update(fields)
            entry["updated"] = time.time()
            total = int(self.r.hget(_k("job", job_id), "total") or 0)
            completed = self._transition(
                keys=[key, _k("job", job_id, "counts"), _k("job", job_id)],
                args=[video_id, entry["status"], json.dumps(entry), total, time.time(), _s(raw) if raw else ""],
            )
            if int(completed) >= 0:
                break
        if "status" in fields:
            data = {"video": video_id, "status": entry["status"]}
            for extra in ("error", "outputs"):
                if entry.get(extra):
                    data[extra] = entry[extra]
            self.event(job_id, f"video_{entry['status']}", data)
        return "completed" if int(completed) else "written"

    def requeue(self, job_id: str, video_id: str, attempt: int) -> int | None:
        """Queue a ``processing`` video of ``attempt`` again under the next attempt (its lost work
        restarts; the cancelled flag is left alone); None when it is no longer in that state."""
        entry = self.video(job_id, video_id)
        if entry.get("status") != "processing" or int(entry.get("attempt") or 0) != attempt:
            return None
        fields = {"status": "queued", "attempt": attempt + 1, "requeued": int(entry.get("requeued") or 0) + 1}
        refused = self._merge(job_id, video_id, attempt, fields, only_if="processing") == "refused"
        return None if refused else attempt + 1

    def reopen(self, job_id: str, video_ids: list[str]) -> dict[str, int]:
        """Queue these videos again, each under a new attempt number (returned): tasks of an earlier
        attempt that are still queued or running see it and stop, instead of running beside the new
        chain (a cancelled video retried at once)."""
        self.r.hdel(_k("job", job_id), "completed")
        self.r.hset(_k("job", job_id), "cancelled", 0)
        attempts = {}
        for vid in video_ids:
            attempts[vid] = int(self.video(job_id, vid).get("attempt") or 0) + 1
            self.update_video(job_id, vid, status="queued", error=None, frames_done=0, outputs=None,
                              attempt=attempts[vid])
        return attempts

    def count_delivery(self, job_id: str, video_id: str, chunk: int, by: int = 1) -> int:
        """Count a start of ``chunk`` (``by=-1``: one that an outage interrupted, not a crash)."""
        key = _k("deliveries", job_id, video_id)
        n = self.r.hincrby(key, str(chunk), by)
        self.r.expire(key, 7 * 86400)
        return int(n)

    def reset_deliveries(self, job_id: str, video_id: str) -> None:
        self.r.delete(_k("deliveries", job_id, video_id))

    # --- queries ------------------------------------------------------------------------------
    def summary(self, job_id: str) -> JobSummary:
        job = {_s(k): _s(v) for k, v in self.r.hgetall(_k("job", job_id)).items()}
        if not job:
            raise KeyError(job_id)
        counts = {s: 0 for s in VIDEO_STATES}
        counts.update({_s(k): int(v) for k, v in self.r.hgetall(_k("job", job_id, "counts")).items()})
        total = int(job["total"])
        return JobSummary(job_id, job.get("name", ""), job_status(counts, total, job.get("cancelled") == "1"),
                          total, counts, float(job["created"]), float(job["updated"]))

    def status_document(self, job_id: str) -> dict:
        """What `sam3v status --json` prints."""
        s = self.summary(job_id)
        videos = [json.loads(v) for v in self.r.hvals(_k("job", job_id, "videos"))]
        videos.sort(key=lambda v: (v.get("line") or 0, v["id"]))
        rejected = [json.loads(r) for r in self.r.lrange(_k("job", job_id, "rejected"), 0, -1)]
        frames_done = sum(v.get("frames_done") or 0 for v in videos)
        frames_total = sum(v.get("frames_total") or 0 for v in videos)
        return {"id": s.id, "name": s.name, "status": s.status, "total": s.total, "counts": s.counts,
                "frames_done": frames_done, "frames_total": frames_total, "created": s.created,
                "updated": s.updated, "videos": videos, "rejected": rejected}

    def jobs(self, limit: int = 50) -> list[JobSummary]:
        ids = [_s(j) for j in self.r.zrevrange(_k("jobs"), 0, limit - 1)]
        return [self.summary(j) for j in ids if self.job_exists(j)]

    # --- events -------------------------------------------------------------------------------
    def event(self, job_id: str, kind: str, data: dict) -> None:
        self.r.xadd(EVENTS, {"job": job_id, "kind": kind, "data": json.dumps(data), "time": time.time()},
                    maxlen=EVENTS_MAXLEN, approximate=True)

    def read_events(self, last_id: str = "0-0", block_ms: int | None = None, count: int = 500) -> list[tuple[str, dict]]:
        got = self.r.xread({EVENTS: last_id}, block=block_ms, count=count) or []
        out = []
        for _stream, entries in got:
            for eid, fields in entries:
                f = {_s(k): _s(v) for k, v in fields.items()}
                out.append((_s(eid), {"job": f["job"], "kind": f["kind"], "data": json.loads(f["data"]),
                                      "time": float(f["time"])}))
        return out


def _s(value) -> str:
    return value.decode() if isinstance(value, bytes) else value
