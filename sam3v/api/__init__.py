"""The HTTP API: a drop-in for the hosted ``sam-3-video`` model (sync, async queue, SSE, model details).

Start it with ``sam3v api --host 127.0.0.1 --port 8000`` (uvicorn, one process). The process keeps
no state of its own: generations, their owners and events all live in Redis, so any number of API
processes can serve the same deployment behind a load balancer. It never imports torch.

Embedded mode (``SAM3V_BROKER_URL`` unset): the app's lifespan starts the in-process Celery worker
(``sam3v.embedded.embedded_worker``) with an in-process Redis (fakeredis) and local storage, so a
single ``sam3v api`` runs generations on its own; this imports the worker stack (torch) into the
API process and is meant for a laptop or a demo, not for production.
"""

from sam3v.api.app import create_app

__all__ = ["create_app"]
