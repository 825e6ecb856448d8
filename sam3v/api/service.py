"""Generations in Redis: a generation is a one-video job (lane ``interactive``) plus a metadata hash
``sam3v:gen:{id}`` (owner key digest, model, request params, created) and a per-owner index
``sam3v:gen:owner:{digest}`` (sorted set by creation time). Nothing is kept in the API process."""

from __future__ import annotations

import hmac
import json
import re
import time
from pathlib import Path

from sam3v.api.errors import APIError
from sam3v.api.schemas import GenerationRequest
from sam3v.api.uploads import resolve_upload
from pipeline.core.errors import InputError
from pipeline.core.layout import REPORT_NAME, JobKeys, VideoKeys, output_name
from pipeline.control.manifest import parse_manifest
from pipeline.control.lifecycle import cancel_job
from pipeline.control.producer import enqueue_videos, retry_videos
from pipeline.core.status import TERMINAL, StatusStore, _s
from pipeline.core.uris import Scheme, parse_uri, storage_uri
from pipeline.core.urls import check_url

EVENT_NAMES = {"video_succeeded": "media_generation_completed", "video_failed": "media_generation_failed",
               "video_cancelled": "media_generation_cancelled"}
VIDEO_ID = "video"
LANE = "interactive"


# The shape of StatusStore.new_job_id()'s ids ("20250101-120000-0123abcd"); tests/test_abuse.py
# checks the two agree. A path id of any other shape is answered 404 before it reaches Redis: one
# like "owner:<digest>" would name one of this module's own keys (a WRONGTYPE error, a 500).
GENERATION_ID = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")


def check_generation_id(gen_id: str) -> None:
    """404 ``not_found`` for an id no generation can have."""
    if not GENERATION_ID.fullmatch(gen_id):
        raise APIError(404, "not_found", f"no generation {gen_id}")


def gen_key(gen_id: str) -> str:
    return f"sam3v:gen:{gen_id}"


def owner_key(owner: str) -> str:
    return f"sam3v:gen:owner:{owner}"


# One object's mask video in the ``objects`` export: its id, nothing else (never a path).
OBJECT_FILE = re.compile(r"[0-9]{1,10}\.mkv")

class Generations:
    def __init__(self, settings, redis_client, celery_app, storage):
        self.settings = settings
        self.r = redis_client
        self.store = StatusStore(redis_client)
        self.celery = celery_app
        self.storage = storage
        self.presigned = storage.presigns  # S3: presigned URLs; local: our download route

    # --- create -------------------------------------------------------------------------------
    def check_input(self, req: GenerationRequest, owner: str) -> str | None:
        """422 for an input or webhook this server may not use; returns where workers read an
        upload (None for other inputs)."""
        uri = parse_uri(req.input_video)  # the request's normal form: the scheme is lower case
        if uri.scheme in (Scheme.HTTP, Scheme.HTTPS):
            self._check_url(uri.text, "input_video")
        elif uri.scheme is Scheme.S3:
            # An entry is a bucket or bucket/prefix; a key outside them (another tenant's results,
            # uploads) is refused. parse_uri refused '..' segments, so a key cannot climb out.
            bucket_key = f"{uri.bucket}/{uri.key}"
            if not any(bucket_key.startswith(entry.strip("/") + "/") for entry in self.settings.api_s3_buckets):
                raise APIError(422, "invalid_request", f"input_video: {uri.text}: this server reads s3:// inputs only "
                               "from the buckets in SAM3V_API_S3_BUCKETS", field="input_video")
        if req.webhook_url:
            self._check_url(req.webhook_url, "webhook_url")
        if uri.scheme is Scheme.UPLOAD:
            # Our own storage's key, not a path or an s3:// URI: workers read it from the storage
            # they share with us, and no job of this API ever names a local path.
            return storage_uri(resolve_upload(self.r, uri.text, owner))
        return None

    def _check_url(self, url: str, field: str) -> None:
        try:
            check_url(url, self.settings.url_allowlist)
        except InputError as err:
            raise APIError(422, "invalid_request", f"{field}: {err}", field=field) from None

    def create(self, req: GenerationRequest, owner: str, base_url: str, video: str | None = None) -> str:
        """A generation; ``video``: where workers read an upload (``check_input``'s answer)."""
        data = json.dumps(req.manifest_line(video)).encode()
        # storage: keys only ever come from our own upload store (check_input), never from a caller.
        parsed = parse_manifest(data, "api.jsonl", allow_storage=video is not None,
                                max_prompts=self.settings.max_prompts)
        if parsed.rejected:
            reason = parsed.rejected[0].reason
            # The field as the request's own validation names it (objects[2].box -> objects.2.box).
            field = re.sub(r"\[(\d+)\]", r".\1", reason.split(":", 1)[0])
            raise APIError(422, "invalid_request", reason, field=field)
        items = [i.model_dump() for i in parsed.items]
        gen_id = self.store.new_job_id()
        now = time.time()
        params = req.model_dump(exclude={"response_format", "num_generations"})
        # Metadata first: by the time any event of this job exists, its owner is known.
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(gen_key(gen_id), mapping={"owner": owner, "model": req.model, "params": json.dumps(params),
                                            "created": now, "base_url": base_url})
        pipe.zadd(owner_key(owner), {gen_id: now})
        pipe.execute()
        self.store.create_job(gen_id, f"api:{req.model}", {"source": "api", "default_prompt": None, "lane": LANE},
                              items, [])
        enqueue_videos(self.celery, gen_id, [VIDEO_ID], LANE)
        return gen_id

    # --- read ---------------------------------------------------------------------------------
    def meta(self, gen_id: str, owner: str) -> dict:
        raw = self.r.hgetall(gen_key(gen_id))
        meta = {_s(k): _s(v) for k, v in raw.items()}
        if not meta or not hmac.compare_digest(meta.get("owner", ""), owner):
            raise APIError(404, "not_found", f"no generation {gen_id}")
        return meta

    def urls(self, gen_id: str, outputs: dict, base_url: str) -> dict[str, str]:
        """name -> where to download it. ``objects`` is a folder: one entry per object's video
        (``objects/3.mkv``), never a link to the folder itself (there is nothing to download there)."""
        keys = VideoKeys(gen_id, VIDEO_ID)
        names = [n for n in outputs if n != "objects"]
        if "objects" in outputs:
            folder = keys.output("objects")
            names += [f"objects/{key.rsplit('/', 1)[-1]}" for key in self.storage.list(folder)
                      if OBJECT_FILE.fullmatch(key.rsplit("/", 1)[-1])]
        out = {}
        for name in names:
            if self.presigned:
                out[name] = self.storage.url(keys.output(name), self.settings.api_url_expires)
            else:
                out[name] = f"{base_url.rstrip('/')}/api/ai/queue/{gen_id}/files/{name}"
        return out

    @staticmethod
    def main_output(outputs: dict, apply_mask: bool) -> str | None:
        order = ("overlay", "mask") if apply_mask else ("mask", "overlay")
        for name in (*order, "masks"):
            if name in outputs:
                return name
        return None

    def document(self, gen_id: str, meta: dict, base_url: str, video: dict | None = None) -> dict:
        video = video if video is not None else self.store.video(gen_id, VIDEO_ID)
        params = json.loads(meta["params"])
        status = video.get("status", "queued")
        outputs = (video.get("outputs") or {}) if status == "succeeded" else {}
        urls = self.urls(gen_id, outputs, base_url)
        main = self.main_output(outputs, params.get("apply_mask", True))
        created = float(meta["created"])
        return {
            "generation_id": gen_id, "id": gen_id, "model": meta["model"], "status": status,
            "result_url": urls.get(main) if main else None, "result_urls": urls,
            "error_message": video.get("error") if status in ("failed", "cancelled") else None,
            "created_at": int(created), "updated_at": int(float(video.get("updated") or created)),
            "frames_done": video.get("frames_done") or 0, "frames_total": video.get("frames_total"),
            "input_video": params.get("input_video"), "prompt": params.get("prompt"),
            "apply_mask": params.get("apply_mask", True), "params": params,
            **({"webhook": {"url": params["webhook_url"], "status": meta.get("webhook_status", "pending"),
                            "attempts": int(meta.get("webhook_attempts", 0)),
                            "error": meta.get("webhook_error") or None}} if params.get("webhook_url") else {}),
        }

    def completion(self, gen_id: str, meta: dict, base_url: str, fields: dict) -> dict:
        """What an SSE event's ``data:`` and a webhook's body say of a terminal event ``fields``
        (from the events stream)."""
        data = json.loads(fields.get("data") or "{}")
        video = {"status": data.get("status"), "outputs": data.get("outputs"), "error": data.get("error"),
                 "updated": fields.get("time")}
        doc = self.document(gen_id, meta, base_url, video)
        payload = {"generation_id": gen_id, "model": doc["model"], "status": doc["status"]}
        if doc["status"] == "succeeded":
            payload.update(result_url=doc["result_url"], result_urls=doc["result_urls"])
        else:
            payload["error_message"] = doc["error_message"]
        payload["created_at"] = doc["created_at"]
        return payload

    def list(self, owner: str, base_url: str, status: str | None, model: str | None, limit: int) -> list[dict]:
        out = []
        ids = [_s(i) for i in self.r.zrevrange(owner_key(owner), 0, -1)]
        for start in range(0, len(ids), 200):
            batch = ids[start:start + 200]
            pipe = self.r.pipeline(transaction=False)
            for gen_id in batch:
                pipe.hgetall(gen_key(gen_id))
            for gen_id, raw in zip(batch, pipe.execute()):
                meta = {_s(k): _s(v) for k, v in raw.items()}
                if not meta or (model and meta.get("model") != model):
                    continue
                doc = self.document(gen_id, meta, base_url)
                if status and doc["status"] != status:
                    continue
                out.append(doc)
                if len(out) >= limit:
                    return out
        return out

    # --- change -------------------------------------------------------------------------------
    def cancel(self, gen_id: str) -> None:
        if self.store.video(gen_id, VIDEO_ID).get("status") not in TERMINAL:
            # Closed like a batch job: results.jsonl, work/ removed, its records set to expire.
            cancel_job(self.celery, self.store, gen_id)

    def retry(self, gen_id: str) -> None:
        state = self.store.video(gen_id, VIDEO_ID).get("status")
        if state not in ("failed", "cancelled"):
            raise APIError(409, "conflict", f"generation {gen_id} is {state}: only failed or cancelled "
                                            "generations can be retried")
        retry_videos(self.celery, self.store, gen_id, [VIDEO_ID], LANE)

    def file(self, gen_id: str, name: str) -> tuple[str, Path | None]:
        if name == REPORT_NAME:
            return self._report(gen_id)
        folder, _, object_file = name.partition("/")
        if object_file and (folder != "objects" or not OBJECT_FILE.fullmatch(object_file)):
            raise APIError(404, "not_found", f"generation {gen_id} has no output {name!r}")
        name = output_name(folder)
        video = self.store.video(gen_id, VIDEO_ID)
        if video.get("status") != "succeeded" or name not in (video.get("outputs") or {}) \
                or (name == "objects") != bool(object_file):
            raise APIError(404, "not_found", f"generation {gen_id} has no output {name!r}"
                           + (" (its files are objects/<id>.mkv)" if name == "objects" and not object_file else ""))
        key = VideoKeys(gen_id, VIDEO_ID).output(f"objects/{object_file}" if object_file else name)
        if not self.storage.exists(key):  # deleted since (a lifecycle rule, a person): say so, not 500
            raise APIError(404, "not_found", f"generation {gen_id}: output {name!r} is no longer in storage")
        local = None if self.presigned else Path(self.storage.uri(key))
        return key, local

    def _report(self, gen_id: str) -> tuple[str, Path | None]:
        """The generation's report.html, written when it ended (any end: a failed one has a report too)."""
        key = JobKeys(gen_id).report()
        if self.store.video(gen_id, VIDEO_ID).get("status") not in TERMINAL or not self.storage.exists(key):
            raise APIError(404, "not_found", f"generation {gen_id} has no report yet: it is written when it ends")
        # Served by this API even with S3 (no presigned URL): the page must carry our headers (CSP).
        return key, None
