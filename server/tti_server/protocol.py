"""The wire format: pydantic models for every request and response body.

Request models check types and the fixed rules (positive sizes, `n` 1-10, known
formats); limits that depend on settings are checked in `generation.py` and
written into the OpenAPI document by `api/openapi.py`.

caikit's request is read as the caikit runtime reads it (pydantic's lax mode:
`"64"` or `64.0` for a height is 64); the OpenAI request is strict.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from tti_contracts.api import ImageFormat
from tti_server.settings import normalise_format

AnyCaseFormat = Annotated[ImageFormat, BeforeValidator(normalise_format)]


def _whole_float_as_int(value: object) -> object:
    """JSON Schema's integer includes 2.0: a strict int field takes a whole float too."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


_Whole = BeforeValidator(_whole_float_as_int)  # after the constraints, or they go unstated
Seed = Annotated[int, Field(ge=0, le=2**63 - 1), _Whole]
ImageCount = Annotated[int, Field(ge=1, le=10), _Whole]
Steps = Annotated[int, Field(gt=0), _Whole]
PartialImages = Annotated[int, Field(ge=0, le=3), _Whole]
_SIDE = "pixels (sdxl-turbo: the nearest multiple of 8)"
_SIZE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class _AsCaikit(BaseModel):
    """As the caikit runtime's request models: values coerced, unknown fields refused."""

    model_config = ConfigDict(extra="forbid")


class ErrorResponse(BaseModel):
    """The one error envelope every error response uses."""

    code: int = Field(description="the HTTP status code")
    details: str = Field(description="what was wrong, naming the field")
    id: str = Field(description="the request id, also in the X-Request-Id header")


# caikit-runtime: POST /api/v1/task/text-to-image


class CaikitParameters(_AsCaikit):
    """The seed's `SDXL.run` keyword arguments, plus `seed`."""

    height: int | None = Field(default=None, gt=0, description=_SIDE)
    width: int | None = Field(default=None, gt=0, description=_SIDE)
    num_steps: int | None = Field(
        default=None, gt=0, description="denoising steps (SDXL-Turbo: 1-4)"
    )
    guidance_scale: float | None = Field(default=None, ge=0, le=50)
    negative_prompt: str | None = None
    image_format: AnyCaseFormat | None = Field(
        default=None, description="png, jpeg or webp, any case"
    )
    seed: Seed | None = Field(default=None, description="the same seed gives the same image")


class CaikitTextToImageRequest(_AsCaikit):
    model_id: str | None = Field(default=None, description="must name the served model when given")
    inputs: str = Field(description="the prompt")
    parameters: CaikitParameters | None = None


class CaikitImage(BaseModel):
    image_data: str = Field(description="the encoded image, base64")


class ProducerId(BaseModel):
    name: str
    version: str


class CaikitTextToImageResponse(BaseModel):
    """What a caikit runtime returns for the seed's `TextToImageTask` (a CaptionedImage)."""

    output: CaikitImage
    caption: str
    producer_id: ProducerId


# OpenAI: POST /v1/images/generations, GET /v1/models


class OpenAIImageRequest(BaseModel):
    """OpenAI's image request; unknown OpenAI options (quality, style, ...) are ignored."""

    model_config = ConfigDict(strict=True, extra="ignore")

    prompt: str = Field(min_length=1)
    model: str | None = None
    n: ImageCount = 1
    size: str | None = Field(default=None, description="'WIDTHxHEIGHT' or 'auto'")
    response_format: Literal["b64_json", "url"] | None = None
    output_format: AnyCaseFormat | None = None
    stream: bool | None = Field(
        default=None, description="true: server-sent events, partial images then the image"
    )
    partial_images: PartialImages | None = Field(
        default=None, description="with stream: previews per image while it denoises (0-3)"
    )
    # Extensions beyond OpenAI's API (pass them with the client's `extra_body`).
    seed: Seed | None = None
    num_steps: Steps | None = None
    guidance_scale: float | None = Field(default=None, ge=0, le=50)
    negative_prompt: str | None = None
    adapter_scale: float | None = Field(
        default=None,
        ge=0,
        le=4,
        description="with model 'MODEL/ADAPTER': the LoRA adapter's scale (default: its own; "
        "ignored without an adapter)",
    )

    @field_validator("size")
    @classmethod
    def _size_shape(cls, value: str | None) -> str | None:
        if value is None or value == "auto" or _SIZE.match(value):
            return value
        raise ValueError(f"expected 'WIDTHxHEIGHT' such as '512x512' or 'auto', got {value!r}")

    def parsed_size(self) -> tuple[int, int] | None:
        """(width, height), or None for the default size."""
        match = _SIZE.match(self.size or "")
        return (int(match[1]), int(match[2])) if match else None


class OpenAIImage(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class OpenAIImagesResponse(BaseModel):
    created: int
    data: list[OpenAIImage]
    output_format: ImageFormat
    size: str


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "tti-operator"
    parent: str | None = Field(default=None, description="a LoRA adapter's base model")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# Probes and information


class ModelInfo(BaseModel):
    """One entry of caikit's `/info/models`, with the fields the caikit runtime gives."""

    model_path: str
    name: str
    size: int = Field(description="bytes of the model's files (0: built in)")
    metadata: dict[str, object] = Field(
        description="tti-server: workers, devices, and side_multiple (each requested side "
        "goes to the nearest multiple of it, ties to even)"
    )
    loaded: bool
    module_id: str
    module_metadata: dict[str, str]


class ModelsInfo(BaseModel):
    models: list[ModelInfo]


class RuntimeInfo(BaseModel):
    """caikit's `/info/version`."""

    python_packages: dict[str, str]
    runtime_version: str | None = None


class Status(BaseModel):
    status: str
