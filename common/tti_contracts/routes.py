"""The generation routes every model serves and the gateway forwards, and how each names
its model."""

from __future__ import annotations

from dataclasses import dataclass

#: caikit's name for the model in gRPC metadata; the gateway also reads it as an HTTP
#: header, for bodies that are not JSON.
MODEL_HEADER = "mm-model-id"

CAIKIT_TEXT_TO_IMAGE = "/api/v1/task/text-to-image"
OPENAI_IMAGES = "/v1/images/generations"


@dataclass(frozen=True)
class Route:
    #: The body field that names the model.
    model_field: str
    #: What the server answers for a body its schema refuses on this route (caikit's
    #: runtime answers FastAPI's 422; OpenAI's API answers 400).
    schema_error_status: int


#: The routes the gateway forwards to a model's pods.
FORWARDED: dict[str, Route] = {
    CAIKIT_TEXT_TO_IMAGE: Route(model_field="model_id", schema_error_status=422),
    OPENAI_IMAGES: Route(model_field="model", schema_error_status=400),
}
