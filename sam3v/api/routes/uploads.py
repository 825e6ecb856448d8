"""``uploads`` and ``webhooks``: storing a video to name as ``upload://<id>``, and each key's webhook
signing secret. Two routers: the upload's body limit comes from settings, so ``create_app`` sets it
when it includes ``router``; the secret route keeps the default."""

from __future__ import annotations

from fastapi import APIRouter, Depends, File, Request, UploadFile

from sam3v.api.auth import owner
from sam3v.api.deps import generations
from sam3v.api.uploads import store_upload
from sam3v.api.webhooks import key_secret, server_secret

router = APIRouter(tags=["uploads"])
webhooks_router = APIRouter(tags=["webhooks"])


@router.post("/api/ai/uploads", summary="Upload a video to name as input_video")
def upload(request: Request, file: UploadFile = File(..., description="The video (multipart/form-data)."),
           who: str = Depends(owner)):
    """Stores the file; answers `input_video: "upload://<id>"` to use in POST /api/ai/queue or
    /api/ai/videos/generate. Only your key can use it, for SAM3V_API_UPLOAD_TTL seconds."""
    g = generations(request)
    return store_upload(g.r, g.storage, file.file, file.filename, who, g.settings.api_upload_max_bytes,
                        g.settings.api_upload_ttl)


@webhooks_router.get("/api/ai/webhooks/secret", summary="Your webhook signing secret")
def webhook_secret(request: Request, who: str = Depends(owner)):
    """Webhook bodies carry `X-Sam3v-Signature: t=<unix time>,v2=<hex>`, where hex is
    HMAC-SHA256(secret, `<t>\\n<X-Sam3v-Event>\\n<X-Sam3v-Delivery>\\n<raw body>`). Each key has its own secret."""
    g = generations(request)
    return {"secret": key_secret(server_secret(g.r, g.settings.api_webhook_secret), who),
            "header": "X-Sam3v-Signature", "scheme": "t=<unix time>,v2=hex(HMAC-SHA256(secret, '<t>\\n<event>\\n<delivery>\\n<body>'))"}
