"""OpenAI-compatible image generation and model listing, for the official `openai` client."""

from __future__ import annotations

import base64
import time

from fastapi import APIRouter, Request
from starlette.responses import Response

from tti_server.api.deps import service_of
from tti_server.api.errors_doc import GENERATION_ERRORS
from tti_server.api.json_route import ValidatedJSONRoute, json_response
from tti_server.protocol import ModelCard, ModelList, OpenAIImageRequest, OpenAIImagesResponse

router = APIRouter(prefix="/v1", tags=["openai"], route_class=ValidatedJSONRoute)


@router.post(
    "/images/generations",
    response_model=OpenAIImagesResponse,
    responses=GENERATION_ERRORS,
    summary="Generate 1-10 images (OpenAI images API)",
)
async def create_images(body: OpenAIImageRequest, request: Request) -> Response:
    result = await service_of(request).images(body)
    answer = {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(image).decode()} for image in result.images],
        "output_format": result.image_format,
        "size": f"{result.width}x{result.height}",
    }
    return json_response(answer)


@router.get("/models", summary="The served model (OpenAI models API)")
async def list_models(request: Request) -> ModelList:
    service = service_of(request)
    return ModelList(data=[ModelCard(id=service.model_id, created=service.started)])
