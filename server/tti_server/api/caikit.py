"""caikit-runtime compatible text-to-image: JSON like caikit's, or raw bytes by Accept."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request
from starlette.responses import Response

from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE
from tti_server.api.deps import service_of
from tti_server.api.errors_doc import CAIKIT_ERRORS
from tti_server.api.json_route import CaikitRoute, json_response
from tti_server.encoding import MEDIA_TYPES, raw_format_accepted
from tti_server.protocol import CaikitTextToImageRequest, CaikitTextToImageResponse

router = APIRouter(tags=["caikit"], route_class=CaikitRoute)

_RAW_IMAGES: dict[str, dict[str, object]] = {media: {} for media in MEDIA_TYPES.values()}


@router.post(
    CAIKIT_TEXT_TO_IMAGE,
    response_model=CaikitTextToImageResponse,
    responses={**CAIKIT_ERRORS, 200: {"content": _RAW_IMAGES}},
    summary="Generate one image (caikit TextToImageTask)",
)
async def text_to_image(body: CaikitTextToImageRequest, request: Request) -> Response:
    service = service_of(request)
    requested = body.parameters.image_format if body.parameters else None
    raw_format = raw_format_accepted(
        request.headers.get("accept"), requested or service.settings.image_format
    )
    result = await service.text_to_image(body, raw_format)
    if raw_format:
        return Response(result.image, media_type=MEDIA_TYPES[raw_format])
    answer = {
        "output": {"image_data": base64.b64encode(result.image).decode()},
        "caption": result.caption,
        "producer_id": result.producer,
    }
    return json_response(answer)
