"""Pure builders: a validated protocol request plus the settings' limits -> an engine request.

These apply what the seed's modules mean (positive sizes; SDXL rounds them to
multiples of 8, the stub draws any size), each model's rules from the catalogue (largest
side, most steps, guidance, whether it takes a negative prompt) and the server's limits
(longest prompt), raising the transport-neutral `InvalidInput` and `UnknownModel`, whose
message names the field and the model's rule. The OpenAPI document states the same limits
(`api/openapi.py`). A request names a LoRA adapter as `MODEL/ADAPTER` wherever it names
the model; the adapters table says which exist.
"""

from __future__ import annotations

from dataclasses import dataclass

from tti_contracts.api import ImageFormat
from tti_server.adapters import NO_ADAPTERS, AdapterTable
from tti_server.backends.base import BatchKey, GenerationRequest
from tti_server.failures import InvalidInput, NotReady, UnknownModel
from tti_server.protocol import CaikitParameters, CaikitTextToImageRequest, OpenAIImageRequest
from tti_server.settings import Settings


@dataclass(frozen=True)
class Job:
    """What to generate and how to encode it."""

    request: GenerationRequest
    image_format: ImageFormat


def fitted_side(pixels: int, multiple: int) -> int:
    """The nearest multiple of `multiple`, ties to even (as caikit's SDXL), never 0."""
    return max(multiple, round(pixels / multiple) * multiple)


def checked_side(field: str, pixels: int | None, settings: Settings) -> int:
    multiple = settings.catalogue_entry.side_multiple
    if pixels is None:
        return fitted_side(settings.side_when_unnamed, multiple)
    if pixels <= 0:
        raise InvalidInput(f"{field}: must be greater than 0, got {pixels}")
    if pixels > settings.largest_side:
        raise InvalidInput(
            f"{field}: {pixels} exceeds the maximum of {settings.largest_side} pixels "
            f"for {settings.model}"
        )
    return fitted_side(pixels, multiple)


def checked_prompt(field: str, text: str, settings: Settings) -> str:
    """Any text up to the limit: caikit's modules take an empty prompt too."""
    if len(text) > settings.max_prompt_length:
        raise InvalidInput(
            f"{field}: {len(text)} characters exceed the maximum of {settings.max_prompt_length}"
        )
    return text


def checked_negative_prompt(field: str, text: str | None, settings: Settings) -> str | None:
    """The negative prompt, validated; None for a model that ignores it, so that requests
    differing only in it still share a batch."""
    if not text:
        return None
    checked = checked_prompt(field, text, settings)
    use = settings.catalogue_entry.negative_prompt
    if use == "refused":
        raise InvalidInput(
            f"{field}: {settings.model} takes no negative prompt (the "
            f"{settings.catalogue_entry.family} family has no negative conditioning); "
            "describe what you want in the prompt instead"
        )
    return checked if use == "used" else None


def checked_steps(field: str, steps: int | None, settings: Settings) -> int:
    if steps is None:
        return settings.catalogue_entry.default_steps
    if steps > settings.most_steps:
        raise InvalidInput(
            f"{field}: {steps} exceeds the maximum of {settings.most_steps} for {settings.model}"
        )
    return steps


def checked_guidance(field: str, value: float | None, settings: Settings) -> float:
    model = settings.catalogue_entry
    if value is None:
        return model.default_guidance
    if model.max_guidance == 0 and value > 0:
        raise InvalidInput(
            f"{field}: {settings.model} takes no guidance (it was distilled without it); "
            "leave it unset or 0"
        )
    if model.max_guidance is not None and value > model.max_guidance:
        raise InvalidInput(
            f"{field}: {value:g} exceeds the maximum of {model.max_guidance:g} for {settings.model}"
        )
    return float(value)


@dataclass(frozen=True)
class Adapter:
    """The adapter a request names (`name` None: the base model) and its scale."""

    name: str | None = None
    scale: float = 1.0


BASE = Adapter()


def checked_model(
    field: str, name: str | None, settings: Settings, adapters: AdapterTable = NO_ADAPTERS
) -> Adapter:
    """The served model (`MODEL`) or one of its loaded adapters (`MODEL/ADAPTER`)."""
    served = settings.served_model_id
    if name is None or name == served:
        return BASE
    prefix = served + "/"
    if not name.startswith(prefix):
        raise UnknownModel(
            f"{field}: model {name!r} is not served here; this server serves {served!r}"
        )
    adapter = name[len(prefix) :]
    status = adapters.entries.get(adapter)
    if status is None:
        loaded = ", ".join(repr(prefix + known) for known in adapters.loaded())
        raise UnknownModel(
            f"{field}: {served!r} has no adapter {adapter!r}; "
            + (f"its adapters: {loaded}" if loaded else "it has no adapters")
        )
    if status.state == "refused":
        raise UnknownModel(f"{field}: adapter {name!r} was refused: {status.reason}")
    if status.state == "loading":
        raise NotReady(f"{field}: adapter {name!r} is still loading; retry shortly")
    return Adapter(adapter, status.scale)


def checked_adapter_scale(scale: float | None, adapter: Adapter) -> Adapter:
    """The request's own scale for its adapter (the protocol checked its range). Without an
    adapter there is nothing to scale: ignored, as `partial_images` without a stream (the
    OpenAPI document cannot state a rule that depends on how `model` is spelled)."""
    if scale is None or adapter.name is None:
        return adapter
    return Adapter(adapter.name, float(scale))


def caikit_job(
    body: CaikitTextToImageRequest,
    settings: Settings,
    model_field: str = "model_id",
    adapters: AdapterTable = NO_ADAPTERS,
) -> Job:
    """`model_field` names where the model id came from (gRPC: the `mm-model-id` metadata).
    An adapter runs at its default scale (caikit's parameters have no field for one)."""
    adapter = checked_model(model_field, body.model_id, settings, adapters)
    params = body.parameters or CaikitParameters()
    key = BatchKey(
        height=checked_side("parameters.height", params.height, settings),
        width=checked_side("parameters.width", params.width, settings),
        num_steps=checked_steps("parameters.num_steps", params.num_steps, settings),
        guidance_scale=checked_guidance(
            "parameters.guidance_scale", params.guidance_scale, settings
        ),
        negative_prompt=checked_negative_prompt(
            "parameters.negative_prompt", params.negative_prompt, settings
        ),
        adapter=adapter.name,
        adapter_scale=adapter.scale,
    )
    prompt = checked_prompt("inputs", body.inputs, settings)
    request = GenerationRequest(prompt=prompt, key=key, n=1, seed=params.seed)
    return Job(request, params.image_format or settings.image_format)


def openai_job(
    body: OpenAIImageRequest, settings: Settings, adapters: AdapterTable = NO_ADAPTERS
) -> Job:
    adapter = checked_adapter_scale(
        body.adapter_scale, checked_model("model", body.model, settings, adapters)
    )
    if body.response_format == "url":
        raise InvalidInput(
            "response_format: 'url' is not supported: this server keeps no image store; "
            "use 'b64_json'"
        )
    width, height = body.parsed_size() or (None, None)
    key = BatchKey(
        height=checked_side("size (height)", height, settings),
        width=checked_side("size (width)", width, settings),
        num_steps=checked_steps("num_steps", body.num_steps, settings),
        guidance_scale=checked_guidance("guidance_scale", body.guidance_scale, settings),
        negative_prompt=checked_negative_prompt("negative_prompt", body.negative_prompt, settings),
        adapter=adapter.name,
        adapter_scale=adapter.scale,
    )
    prompt = checked_prompt("prompt", body.prompt, settings)
    # Partial images exist only in a stream (as OpenAI's); without one they are ignored.
    partial_images = (body.partial_images or 0) if body.stream else 0
    request = GenerationRequest(prompt, key, body.n, body.seed, partial_images)
    return Job(request, body.output_format or settings.image_format)
