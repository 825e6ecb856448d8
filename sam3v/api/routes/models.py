"""``models``: what this server serves (one model) and its request schema."""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter, Depends

from sam3v.api.auth import owner
from sam3v.api.deps import check_model
from sam3v.api.schemas import MODEL_ID, request_schema

router = APIRouter(tags=["models"])


@cache  # the schema is built from the pydantic model: a few ms that need not be paid per request
def model_object() -> dict:
    return {
        "id": MODEL_ID, "object": "model", "name": "Segment Anything 3 - Video", "owned_by": "sam3v",
        "description": ("Detects, segments and tracks every instance of a text concept, and objects given by "
                        "points, boxes or masks, across video frames."),
        "task": "video_segmentation", "input_modalities": ["video", "text"], "output_modalities": ["video"],
        "json_request_schema": request_schema(),
    }


@router.get("/api/ai/models", summary="Models served here")
def list_models(who: str = Depends(owner)):
    return {"models": [model_object()]}


@router.get("/api/ai/models/{model_id}", summary="Model details with json_request_schema")
def get_model(model_id: str, who: str = Depends(owner)):
    check_model(model_id)
    return model_object()
