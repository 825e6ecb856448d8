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
local old_entry = {}
if old then old_entry = cjson.decode(old); old_state = old_entry['status'] end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
-- The job's frame counters move with its videos' (`sam3v status` reads them, not every video).
local new_entry = cjson.decode(ARGV[3])
for _, f in ipairs({'frames_done', 'frames_total'}) do
  local delta = (tonumber(new_entry[f]) or 0) - (tonumber(old_entry[f]) or 0)
  if delta ~= 0 then redis.call('HINCRBYFLOAT', KEYS[3], f, delta) end
end
-- Videos whose frame count is known (probed) or that ended without one: until it reaches the
-- job's total, frames_total is still growing and a watcher says "estimating" instead of an ETA.
local function planned(e)
  if tonumber(e['frames_total']) or e['status'] == 'succeeded' or e['status'] == 'failed'
     or e['status'] == 'cancelled' then return 1 end
  return 0
end
local planned_delta = planned(new_entry) - planned(old_entry)
if planned_delta ~= 0 then redis.call('HINCRBY', KEYS[3], 'videos_planned', planned_delta) end
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


# KEYS: items hash, videos hash, counts hash, order list, job hash. ARGV[1]: 1 for a submit's last
# batch; then (id, item JSON, first status entry JSON) triples in manifest order. A video whose id is
# taken is not recorded: its index in the batch and the first line are returned, flat.
_ADD_VIDEOS = """
local added, repeats = 0, {}
for i = 2, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 2])
    redis.call('RPUSH', KEYS[4], ARGV[i])
    added = added + 1
  else
    local first = cjson.decode(redis.call('HGET', KEYS[1], ARGV[i]))['line']
    table.insert(repeats, (i - 2) / 3)
    table.insert(repeats, tonumber(first) or 0)
  end
end
if added > 0 then redis.call('HINCRBY', KEYS[3], 'queued', added) end
local sentinel = 1
if ARGV[1] == '1' then sentinel = 0 end
redis.call('HSET', KEYS[5], 'total', redis.call('HLEN', KEYS[1]) + sentinel)
return repeats
"""
CANCELLED_BY_USER = "cancelled by the user"

# KEYS: videos hash, job hash. ARGV: video id, the entry as the caller read it, the claimed entry.
# A finalize claims the right to publish its video's outputs: refused (0) once the job's cancel is
# recorded, -1 when the entry changed since the caller read it (the caller reads again).
_CLAIM_PUBLISHING = """
if redis.call('HGET', KEYS[2], 'cancelled') == '1' then return 0 end
if (redis.call('HGET', KEYS[1], ARGV[1]) or '') ~= ARGV[2] then return -1 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
return 1
"""


def publishing(entry: dict) -> bool:
    """The video's finalize has claimed publishing its outputs (``StatusStore.claim_publishing``) for
    the attempt it runs: a cancel no longer stops it; it ends ``succeeded``."""
    claimed = entry.get("publishing")
    return (entry.get("status") == "processing" and claimed is not None
            and int(claimed) == int(entry.get("attempt") or 0))


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
    results: str | None = None  # the URI of results.jsonl, as the workers' storage names it


class StatusStore:
    def __init__(self, redis_client):
        self.r = redis_client
        self._transition = self.r.register_script(_TRANSITION)
        self._add_videos = self.r.register_script(_ADD_VIDEOS)
        self._claim = self.r.register_script(_CLAIM_PUBLISHING)

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
            "spec": json.dumps(spec), "cancelled": 0, "videos_planned": 0,
        })
        for start in range(0, len(items), 1000):
            part = items[start:start + 1000]
            pipe.hset(_k("job", job_id, "items"), mapping={i["id"]: json.dumps(i) for i in part})
            pipe.rpush(_k("job", job_id, "order"), *[i["id"] for i in part])
            pipe.hset(_k("job", job_id, "videos"), mapping={i["id"]: json.dumps(_queued_entry(i)) for i in part})
        if items:
            pipe.hset(_k("job", job_id, "counts"), mapping={"queued": len(items)})
        if rejected:
            pipe.rpush(_k("job", job_id, "rejected"), *[json.dumps(r) for r in rejected])
        pipe.zadd(_k("jobs"), {job_id: now})
        pipe.execute()
        self.event(job_id, "job_created", {"total": len(items), "rejected": len(rejected)})

    def job_exists(self, job_id: str) -> bool:
        # ":" separates a job's own keys (``<job>:videos``...): no job id holds one.
        return ":" not in job_id and bool(self.r.exists(_k("job", job_id)))

    def job_spec(self, job_id: str) -> dict:
        raw = self.r.hget(_k("job", job_id), "spec")
        return json.loads(raw) if raw else {}

    def set_job_fields(self, job_id: str, **fields: str) -> None:
        """Extra facts about a job on its record (its completion hook's outcome)."""
        self.r.hset(_k("job", job_id), mapping=fields)

    def item(self, job_id: str, video_id: str) -> dict:
        raw = self.r.hget(_k("job", job_id, "items"), video_id)
        if raw is None:
            raise KeyError(f"job {job_id} has no video {video_id}")
        return json.loads(raw)

    def is_cancelled(self, job_id: str) -> bool:
        return self.r.hget(_k("job", job_id), "cancelled") in (b"1", "1")

    def mark_cancelled(self, job_id: str) -> int:
        self.r.hset(_k("job", job_id), "cancelled", 1)
        n = self.cancel_videos(job_id)
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
            if fields.get("status") == "cancelled" and publishing(entry):
                return "refused"  # its finalize is publishing: it ends succeeded, never cancelled with outputs
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

    def claim_publishing(self, job_id: str, video_id: str, attempt: int) -> bool:
        """Before a finalize publishes anything: True when the video (at ``attempt``, processing)
        may publish its outputs, in one step with the check that no cancel is recorded; from then
        on a cancel leaves the video to end ``succeeded``. False: cancelled, ended or moved on."""
        key = _k("job", job_id, "videos")
        while True:
            raw = self.r.hget(key, video_id)
            entry = json.loads(raw) if raw else {}
            if int(entry.get("attempt") or 0) != attempt or entry.get("status") != "processing":
                return False
            if publishing(entry):
                return True  # claimed before by this attempt (a redelivered finalize)
            claimed = {**entry, "publishing": attempt, "updated": time.time()}
            got = int(self._claim(keys=[key, _k("job", job_id)], args=[video_id, _s(raw), json.dumps(claimed)]))
            if got >= 0:
                return bool(got)

    def requeue(self, job_id: str, video_id: str, attempt: int) -> int | None:
        """Queue a ``processing`` video of ``attempt`` again under the next attempt (its lost work
        restarts; the cancelled flag is left alone); None when it is no longer in that state."""
        entry = self.video(job_id, video_id)
        if entry.get("status") != "processing" or int(entry.get("attempt") or 0) != attempt:
            return None
        fields = {"status": "queued", "attempt": attempt + 1, "requeued": int(entry.get("requeued") or 0) + 1}
        if publishing(entry):  # its outputs may be partly published: the new attempt finishes them, cancel or not
            fields["publishing"] = attempt + 1
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
                              attempt=attempts[vid], publishing=None)
        return attempts

    def count_delivery(self, job_id: str, video_id: str, chunk: int | str, by: int = 1) -> int:
        """Count a start of ``chunk`` (``"b<k>"``: the backward pass's chunk k; ``by=-1``: one that an
        outage interrupted, not a crash)."""
        key = _k("deliveries", job_id, video_id)
        n = self.r.hincrby(key, str(chunk), by)
        self.r.expire(key, 7 * 86400)
        return int(n)

    def reset_deliveries(self, job_id: str, video_id: str) -> None:
        self.r.delete(_k("deliveries", job_id, video_id))

    # --- queries ------------------------------------------------------------------------------
    def summary(self, job_id: str) -> JobSummary:
        summary = _summary(job_id, self.r.hgetall(_k("job", job_id)), self.r.hgetall(_k("job", job_id, "counts")))
        if summary is None:
            raise KeyError(job_id)
        return summary

    def record_results(self, job_id: str, uri: str) -> None:
        """Where the job's results.jsonl is: recorded by the workers, whose storage settings are the
        ones that count (a shell's own SAM3V_STORAGE_URL may name another bucket)."""
        self.r.hset(_k("job", job_id), "results", uri)

    def status_document(self, job_id: str, offset: int = 0, limit: int | None = None) -> dict:
        """What `sam3v status --json` prints: every video (``limit`` None: a scan of them all), or a
        page of ``limit`` videos and rejected lines from ``offset`` (``status_page``)."""
        if limit is not None:
            return self.status_page(job_id, offset, limit)
        s = self.summary(job_id)
        videos = [json.loads(v) for v in self.r.hvals(_k("job", job_id, "videos"))]
        videos.sort(key=lambda v: (v.get("line") or 0, v["id"]))
        rejected = [json.loads(r) for r in self.r.lrange(_k("job", job_id, "rejected"), 0, -1)]
        frames_done = sum(v.get("frames_done") or 0 for v in videos)
        frames_total = sum(v.get("frames_total") or 0 for v in videos)
        return {"id": s.id, "name": s.name, "status": s.status, "total": s.total, "counts": s.counts,
                "frames_done": frames_done, "frames_total": frames_total, "created": s.created,
                "updated": s.updated, "results": s.results, "videos": videos, "rejected": rejected}

    def jobs(self, limit: int = 50) -> list[JobSummary]:
        """The newest ``limit`` jobs, read in one round trip however many jobs Redis holds."""
        ids = [_s(j) for j in self.r.zrevrange(_k("jobs"), 0, limit - 1)]
        pipe = self.r.pipeline(transaction=False)
        for j in ids:
            pipe.hgetall(_k("job", j))
            pipe.hgetall(_k("job", j, "counts"))
        raw = pipe.execute()
        found = (_summary(j, raw[2 * i], raw[2 * i + 1]) for i, j in enumerate(ids))
        return [s for s in found if s is not None]

    # --- large jobs: streamed in, counted as they run, paged out, cancelled in batches ----------
    def add_videos(self, job_id: str, items: list[dict], last: bool) -> list[tuple[int, int]]:
        """Record one batch of a submit's videos, in manifest order, in one round trip; returns
        (index in ``items``, first line) of each whose id an earlier line of the job already took.
        Until the ``last`` batch the job's total stays one above the videos recorded, so the videos
        already running cannot complete the job while later lines are still read."""
        args: list = [1 if last else 0]
        for i in items:
            args += [i["id"], json.dumps(i), json.dumps(_queued_entry(i))]
        repeats = self._add_videos(keys=[_k("job", job_id, "items"), _k("job", job_id, "videos"),
                                         _k("job", job_id, "counts"), _k("job", job_id, "order"),
                                         _k("job", job_id)], args=args)
        return [(int(repeats[n]), int(repeats[n + 1])) for n in range(0, len(repeats), 2)]

    def add_rejected(self, job_id: str, rejected: list[dict]) -> None:
        if rejected:
            self.r.rpush(_k("job", job_id, "rejected"), *[json.dumps(r) for r in rejected])

    def open_job(self, job_id: str, name: str, spec: dict) -> None:
        """Make a job whose videos ``add_videos`` records visible (its total is theirs to set)."""
        now = time.time()
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(_k("job", job_id), mapping={"id": job_id, "name": name, "created": now, "updated": now,
                                              "spec": json.dumps(spec), "cancelled": 0, "videos_planned": 0})
        pipe.zadd(_k("jobs"), {job_id: now})
        pipe.execute()

    def discard_job(self, job_id: str) -> None:
        """Forget a job refused while it was streamed in (nothing of it was enqueued)."""
        self.r.delete(*[_k("job", job_id, *part) for part in ((), ("items",), ("videos",), ("counts",),
                                                               ("order",), ("rejected",))])
        self.r.zrem(_k("jobs"), job_id)

    def release_idempotency(self, key: str, job_id: str, digest: str) -> None:
        """Give back a key this job claimed and did not use (its manifest was refused)."""
        if _s(self.r.get(_k("idem", key)) or "") == f"{job_id}|{digest}":
            self.r.delete(_k("idem", key))

    def video_ids(self, job_id: str, start: int, count: int) -> list[str]:
        """``count`` video ids from ``start``, in manifest order."""
        if count <= 0:  # LRANGE's end of -1 would mean "to the end"
            return []
        return [_s(v) for v in self.r.lrange(_k("job", job_id, "order"), start, start + count - 1)]

    def status_page(self, job_id: str, offset: int, limit: int) -> dict:
        """The status document from the job's counters and one page of its videos and rejected lines:
        the same cost for 10 videos or 100,000."""
        s = self.summary(job_id)
        pipe = self.r.pipeline(transaction=False)
        pipe.hmget(_k("job", job_id), "frames_done", "frames_total", "videos_planned")
        pipe.exists(_k("job", job_id, "order"))
        pipe.lrange(_k("job", job_id, "rejected"), offset, offset + max(limit, 1) - 1)
        pipe.llen(_k("job", job_id, "rejected"))
        frames, ordered, rejected, rejected_total = pipe.execute()
        if ordered or not s.total:
            ids = self.video_ids(job_id, offset, limit)
            videos = [json.loads(v) for v in self.r.hmget(_k("job", job_id, "videos"), ids) if v] if ids else []
        else:  # a job recorded before the order list existed
            videos = self.status_document(job_id)["videos"][offset:offset + limit]
        return {"id": s.id, "name": s.name, "status": s.status, "total": s.total, "counts": s.counts,
                "frames_done": int(float(frames[0] or 0)), "frames_total": int(float(frames[1] or 0)),
                # None for a job recorded before the count existed (``_TRANSITION``)
                "videos_planned": None if frames[2] is None else int(frames[2]),
                "created": s.created, "updated": s.updated, "results": s.results, "videos": videos,
                "rejected": [json.loads(r) for r in rejected][:limit], "rejected_total": int(rejected_total),
                "page": {"offset": offset, "limit": limit}}

    def cancel_videos(self, job_id: str, batch: int = 1000) -> int:
        """Every video not yet ended becomes cancelled, ``batch`` at a time, each batch one pipelined
        round trip of compare-and-set transitions (the counters move with them) and their events;
        returns how many. An entry that changed under us goes through ``update_video``."""
        key, counts, job = _k("job", job_id, "videos"), _k("job", job_id, "counts"), _k("job", job_id)
        total = int(self.r.hget(job, "total") or 0)
        cursor, n = 0, 0
        while True:
            cursor, entries = self.r.hscan(key, cursor, count=batch)
            open_ = [(_s(vid), _s(raw)) for vid, raw in entries.items()
                     if json.loads(raw).get("status") not in TERMINAL and not publishing(json.loads(raw))]
            if open_:
                now = time.time()
                pipe = self.r.pipeline(transaction=False)
                for vid, raw in open_:
                    entry = {**json.loads(raw), "status": "cancelled", "error": CANCELLED_BY_USER, "updated": now}
                    self._transition(keys=[key, counts, job], args=[vid, "cancelled", json.dumps(entry), total, now, raw],
                                     client=pipe)
                    pipe.xadd(EVENTS, _event_fields(job_id, "video_cancelled", {
                        "video": vid, "status": "cancelled", "error": CANCELLED_BY_USER}),
                        maxlen=EVENTS_MAXLEN, approximate=True)
                results = pipe.execute()[::2]
                for (vid, _), result in zip(open_, results):
                    if int(result) >= 0:
                        n += 1
                    elif self._merge(job_id, vid, None, {"status": "cancelled", "error": CANCELLED_BY_USER}) != "refused":
                        n += 1  # it moved under us (a task started it): cancelled from a fresh read
            if int(cursor) == 0:
                return n

    # --- events -------------------------------------------------------------------------------
    def event(self, job_id: str, kind: str, data: dict) -> None:
        self.r.xadd(EVENTS, _event_fields(job_id, kind, data), maxlen=EVENTS_MAXLEN, approximate=True)

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


def _event_fields(job_id: str, kind: str, data: dict) -> dict:
    return {"job": job_id, "kind": kind, "data": json.dumps(data), "time": time.time()}


def _queued_entry(item: dict) -> dict:
    """A video's first status entry."""
    return {"id": item["id"], "status": "queued", "video": item["video"], "line": item.get("line")}


def _summary(job_id: str, job_raw: dict, counts_raw: dict) -> JobSummary | None:
    """From the job's hash and counts hash as read (None: no such job, or one still being
    recorded)."""
    job = {_s(k): _s(v) for k, v in job_raw.items()}
    if "created" not in job:
        return None
    counts = {s: 0 for s in VIDEO_STATES}
    counts.update({_s(k): int(v) for k, v in counts_raw.items()})
    total = int(job["total"])
    return JobSummary(job_id, job.get("name", ""), job_status(counts, total, job.get("cancelled") == "1"),
                      total, counts, float(job["created"]), float(job["updated"]), job.get("results"))
