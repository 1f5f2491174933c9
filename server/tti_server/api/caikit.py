"""caikit-runtime compatible text-to-image: JSON like caikit's, or raw bytes by Accept."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request
from starlette.responses import Response

from tti_server.api.deps import ready_engine, service_of
from tti_server.api.errors_doc import GENERATION_ERRORS
from tti_server.api.json_route import ValidatedJSONRoute, json_response
from tti_server.encoding import MEDIA_TYPES, NotAcceptable, negotiate_raw_format
from tti_server.errors import InvalidRequest
from tti_server.generation import caikit_job
from tti_server.protocol import CaikitTextToImageRequest, CaikitTextToImageResponse

router = APIRouter(tags=["caikit"], route_class=ValidatedJSONRoute)

_RAW_IMAGES: dict[str, dict[str, object]] = {media: {} for media in MEDIA_TYPES.values()}


@router.post(
    "/api/v1/task/text-to-image",
    response_model=CaikitTextToImageResponse,
    responses={**GENERATION_ERRORS, 200: {"content": _RAW_IMAGES}},
    summary="Generate one image (caikit TextToImageTask)",
)
async def text_to_image(body: CaikitTextToImageRequest, request: Request) -> Response:
    service = service_of(request)
    engine = ready_engine(service)
    job = caikit_job(body, service.settings)
    try:
        raw_format = negotiate_raw_format(request.headers.get("accept"), job.image_format)
    except NotAcceptable as exc:
        raise InvalidRequest(str(exc), status=406) from None
    image_format = raw_format or job.image_format
    (image,) = await service.generate(engine, job.request, image_format)
    if raw_format:
        return Response(image, media_type=MEDIA_TYPES[raw_format])
    answer = {
        "output": {"image_data": base64.b64encode(image).decode()},
        "caption": body.inputs,
        "producer_id": service.producer,
    }
    return json_response(answer)
