"""What the routers share: the ``Generations`` service the lifespan put on ``app.state``, the model
check, and queueing a request's generations (the async queue and the sync route queue alike)."""

from __future__ import annotations

from fastapi import Request

from sam3v.api.errors import APIError
from sam3v.api.schemas import MODEL_ID, GenerationRequest
from sam3v.api.service import Generations

JSON_BODY_MAX = 1024 * 1024  # request bodies are a few hundred bytes; videos come by URL or upload


def generations(request: Request) -> Generations:
    return request.app.state.gens


def check_model(model: str) -> None:
    if model != MODEL_ID:
        raise APIError(404, "model_not_found", f"unknown model {model!r} (this server runs {MODEL_ID})")


def submit(g: Generations, body: GenerationRequest, who: str, base_url: str) -> list[str]:
    """The ids of ``body.num_generations`` new generations; nothing is created when the input is refused."""
    check_model(body.model)
    video = g.check_input(body, who)
    return [g.create(body, who, base_url, video) for _ in range(body.num_generations)]
