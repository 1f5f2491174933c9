"""OpenAI-compatible image generation and model listing, for the official `openai` client.

With `stream: true` the answer is server-sent events as OpenAI sends them: for each image
its partial images (`image_generation.partial_image`), then `image_generation.completed`
with the image. OpenAI's event types carry no image index (its streams carry one image);
with `n` > 1 every event here also carries `image_index` (the client keeps unknown fields).
A failure after the stream started is an `error` event, which the client raises as an
`APIError` with the message; its `error` object also holds the envelope's fields.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response, StreamingResponse

from tti_contracts.envelope import error_body
from tti_server.api.deps import service_of
from tti_server.api.errors_doc import GENERATION_ERRORS
from tti_server.api.json_route import ValidatedJSONRoute, json_response
from tti_server.errors import request_id, service_error_status
from tti_server.failures import ServiceError
from tti_server.protocol import ModelCard, ModelList, OpenAIImageRequest, OpenAIImagesResponse
from tti_server.service import FinalImage, ImageStream, PartialImage, StreamEvent

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["openai"], route_class=ValidatedJSONRoute)

#: The server keeps no token counts; the completed event's type requires the fields.
NO_USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}
#: Server-sent events pass proxies as they come (nginx buffers unless told).
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_STREAMED: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {"text/event-stream": {}},
        "description": "With `stream: true`: `image_generation.partial_image` events, then "
        "`image_generation.completed` per image (or an `error` event)",
    }
}


@router.post(
    "/images/generations",
    response_model=OpenAIImagesResponse,
    responses={**_STREAMED, **GENERATION_ERRORS},
    summary="Generate 1-10 images (OpenAI images API), streamed with partial images if asked",
)
async def create_images(body: OpenAIImageRequest, request: Request) -> Response:
    service = service_of(request)
    if body.stream:
        stream = service.image_stream(body)
        return StreamingResponse(
            server_sent_events(stream, request_id(request)),
            media_type="text/event-stream",
            headers=STREAM_HEADERS,
        )
    result = await service.images(body)
    answer = {
        "created": int(time.time()),
        "data": [{"b64_json": base64.b64encode(image).decode()} for image in result.images],
        "output_format": result.image_format,
        "size": f"{result.width}x{result.height}",
    }
    return json_response(answer)


@router.get("/models", summary="The served model and its loaded adapters (OpenAI models API)")
async def list_models(request: Request) -> ModelList:
    service = service_of(request)
    model, created = service.model_id, service.started
    adapters = [
        ModelCard(id=f"{model}/{name}", created=created, parent=model)
        for name in service.adapters.table.loaded()
    ]
    return ModelList(data=[ModelCard(id=model, created=created), *adapters])


async def server_sent_events(stream: ImageStream, rid: str) -> AsyncIterator[bytes]:
    """The stream's events as SSE; a failure on the way becomes the last, `error`, event."""
    try:
        async for event in stream.events:
            yield sse(event_type(event), image_event(event, stream))
    except Exception as exc:
        yield sse("error", error_event(exc, rid))


def event_type(event: StreamEvent) -> str:
    if isinstance(event, PartialImage):
        return "image_generation.partial_image"
    return "image_generation.completed"


def image_event(event: StreamEvent, stream: ImageStream) -> dict[str, Any]:
    """The fields OpenAI's `ImageGenPartialImageEvent` / `ImageGenCompletedEvent` have."""
    fields: dict[str, Any] = {
        "type": event_type(event),
        "b64_json": base64.b64encode(event.image).decode(),
        "created_at": int(time.time()),
        "size": f"{stream.width}x{stream.height}",
        "output_format": stream.image_format,
        "background": "opaque",
        "quality": "auto",
        "image_index": event.index,
    }
    if isinstance(event, FinalImage):
        fields["usage"] = NO_USAGE
    else:
        fields["partial_image_index"] = event.partial_index
    return fields


def error_event(exc: Exception, rid: str) -> dict[str, Any]:
    """The envelope, plus the `message` the openai client raises an `APIError` with."""
    if isinstance(exc, ServiceError):
        status, details = service_error_status(exc)[0], str(exc)
    else:
        log.error("streamed request %s failed", rid, exc_info=exc)
        status, details = 500, f"internal server error (request {rid}; see the log)"
    envelope = json.loads(error_body(status, details, rid))
    return {"type": "error", "error": {"message": details, **envelope}}


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()
