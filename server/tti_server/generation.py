"""Pure builders: a validated protocol request plus the settings' limits -> an engine request.

These apply what the seed's module means (positive sizes, rounded to multiples
of 8) and the limits it lacks (largest side, most steps, longest prompt).
"""

from __future__ import annotations

from dataclasses import dataclass

from tti_server.backends.base import BatchKey, GenerationRequest
from tti_server.errors import InvalidRequest
from tti_server.protocol import CaikitParameters, CaikitTextToImageRequest, OpenAIImageRequest
from tti_server.settings import ImageFormat, Settings


@dataclass(frozen=True)
class Job:
    """What to generate and how to encode it."""

    request: GenerationRequest
    image_format: ImageFormat


def round_to_8(pixels: int) -> int:
    """The nearest multiple of 8 (halves round up), never 0."""
    return max(8, (pixels + 4) // 8 * 8)


def checked_side(field: str, pixels: int | None, settings: Settings) -> int:
    if pixels is None:
        return round_to_8(settings.default_size)
    if pixels <= 0:
        raise InvalidRequest(f"{field}: must be greater than 0, got {pixels}")
    rounded = round_to_8(pixels)
    if rounded > settings.max_side:
        raise InvalidRequest(f"{field}: {pixels} exceeds the maximum of {settings.max_side} pixels")
    return rounded


def checked_prompt(field: str, text: str, settings: Settings) -> str:
    if not text.strip():
        raise InvalidRequest(f"{field}: must not be empty")
    if len(text) > settings.max_prompt_length:
        raise InvalidRequest(
            f"{field}: {len(text)} characters exceed the maximum of {settings.max_prompt_length}"
        )
    return text


def checked_negative_prompt(field: str, text: str | None, settings: Settings) -> str | None:
    """The negative prompt, validated; None for a model that takes none, so that requests
    differing only in it still share a batch."""
    if text is None or not text.strip():
        return None
    checked = checked_prompt(field, text, settings)
    return checked if settings.catalogue_entry.negative_prompt else None


def checked_steps(field: str, steps: int | None, settings: Settings) -> int:
    if steps is None:
        return settings.catalogue_entry.default_steps
    if steps > settings.max_steps:
        raise InvalidRequest(f"{field}: {steps} exceeds the maximum of {settings.max_steps}")
    return steps


def checked_model(field: str, name: str | None, settings: Settings) -> None:
    if name is not None and name != settings.served_model_id:
        raise InvalidRequest(
            f"{field}: model {name!r} is not served here; this server serves "
            f"{settings.served_model_id!r}",
            status=404,
        )


def caikit_job(body: CaikitTextToImageRequest, settings: Settings) -> Job:
    checked_model("model_id", body.model_id, settings)
    params = body.parameters or CaikitParameters()
    key = BatchKey(
        height=checked_side("parameters.height", params.height, settings),
        width=checked_side("parameters.width", params.width, settings),
        num_steps=checked_steps("parameters.num_steps", params.num_steps, settings),
        guidance_scale=_guidance(params.guidance_scale, settings),
        negative_prompt=checked_negative_prompt(
            "parameters.negative_prompt", params.negative_prompt, settings
        ),
    )
    prompt = checked_prompt("inputs", body.inputs, settings)
    request = GenerationRequest(prompt=prompt, key=key, n=1, seed=params.seed)
    return Job(request, params.image_format or settings.image_format)


def openai_job(body: OpenAIImageRequest, settings: Settings) -> Job:
    checked_model("model", body.model, settings)
    if body.response_format == "url":
        raise InvalidRequest(
            "response_format: 'url' is not supported: this server keeps no image store; "
            "use 'b64_json'"
        )
    width, height = body.parsed_size() or (None, None)
    key = BatchKey(
        height=checked_side("size (height)", height, settings),
        width=checked_side("size (width)", width, settings),
        num_steps=checked_steps("num_steps", body.num_steps, settings),
        guidance_scale=_guidance(body.guidance_scale, settings),
        negative_prompt=checked_negative_prompt("negative_prompt", body.negative_prompt, settings),
    )
    prompt = checked_prompt("prompt", body.prompt, settings)
    request = GenerationRequest(prompt=prompt, key=key, n=body.n, seed=body.seed)
    return Job(request, body.output_format or settings.image_format)


def _guidance(value: float | None, settings: Settings) -> float:
    return settings.catalogue_entry.default_guidance if value is None else float(value)
