"""caikit-runtime compatible text-to-image: JSON like caikit's, or raw bytes by Accept.

The route asks the Accept header whether to answer with raw bytes or JSON. A media
type that names a format (`image/webp`) is also a request for that format: it goes
into the request's `parameters.image_format`, where it wins over the body's. The
service alone decides the format, and its answer says which one it encoded.
"""

from __future__ import annotations

import base64
from typing import NamedTuple

from fastapi import APIRouter, Request
from starlette.responses import Response

from tti_contracts.api import ImageFormat
from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE
from tti_server.api.deps import service_of
from tti_server.api.errors_doc import CAIKIT_ERRORS
from tti_server.api.json_route import CaikitRoute, json_response
from tti_server.encoding import MEDIA_TYPES
from tti_server.protocol import (
    CaikitParameters,
    CaikitTextToImageRequest,
    CaikitTextToImageResponse,
)

router = APIRouter(tags=["caikit"], route_class=CaikitRoute)

_RAW_IMAGES: dict[str, dict[str, object]] = {media: {} for media in MEDIA_TYPES.values()}
_FORMAT_BY_MEDIA_TYPE = {media: fmt for fmt, media in MEDIA_TYPES.items()}
_JSON_MEDIA_TYPES = {"application/json", "application/*", "*/*"}


class Answer(NamedTuple):
    """What the Accept header asks for."""

    raw: bool  # the image's own bytes, else caikit's JSON
    image_format: ImageFormat | None = None  # a format it names; wins over the body's


JSON = Answer(raw=False)


def answer_accepted(accept: str | None) -> Answer:
    """Raw bytes for the first image media type this server can produce, else JSON.

    Media types are taken in the order listed (q-values are not weighed);
    `image/*` means raw bytes in the format the request asks for. Anything else,
    even a type this server cannot produce, means JSON: the caikit runtime
    ignores Accept.
    """
    for item in (accept or "").split(","):
        media = item.split(";", 1)[0].strip().lower()
        if media in _FORMAT_BY_MEDIA_TYPE:
            return Answer(raw=True, image_format=_FORMAT_BY_MEDIA_TYPE[media])
        if media == "image/*":
            return Answer(raw=True)
        if media in _JSON_MEDIA_TYPES:
            return JSON
    return JSON


def with_image_format(
    body: CaikitTextToImageRequest, image_format: ImageFormat | None
) -> CaikitTextToImageRequest:
    """The request with `parameters.image_format` set to `image_format` (None: as it is)."""
    if image_format is None:
        return body
    parameters = body.parameters or CaikitParameters()
    changed = parameters.model_copy(update={"image_format": image_format})
    return body.model_copy(update={"parameters": changed})


@router.post(
    CAIKIT_TEXT_TO_IMAGE,
    response_model=CaikitTextToImageResponse,
    responses={**CAIKIT_ERRORS, 200: {"content": _RAW_IMAGES}},
    summary="Generate one image (caikit TextToImageTask)",
)
async def text_to_image(body: CaikitTextToImageRequest, request: Request) -> Response:
    answer = answer_accepted(request.headers.get("accept"))
    result = await service_of(request).text_to_image(with_image_format(body, answer.image_format))
    if answer.raw:
        return Response(result.image, media_type=MEDIA_TYPES[result.image_format])
    content = {
        "output": {"image_data": base64.b64encode(result.image).decode()},
        "caption": result.caption,
        "producer_id": result.producer,
    }
    return json_response(content)
