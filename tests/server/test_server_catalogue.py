"""The server takes each model's defaults and rules from the catalogue the operator shares."""

from __future__ import annotations

import pytest

from tti_contracts.catalogue import CATALOGUE
from tti_server.failures import InvalidInput
from tti_server.generation import caikit_job, openai_job
from tti_server.protocol import CaikitTextToImageRequest, OpenAIImageRequest
from tti_server.settings import Settings


def settings_for(name: str, **overrides: object) -> Settings:
    return Settings(model=name, model_path="/models/x", **overrides)  # type: ignore[arg-type]


def caikit_body(**parameters: object) -> CaikitTextToImageRequest:
    return CaikitTextToImageRequest.model_validate(
        {"inputs": "a lighthouse", "parameters": parameters}
    )


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_defaults_of_a_request_are_the_models(name: str) -> None:
    model = CATALOGUE[name]
    key = caikit_job(caikit_body(), settings_for(name)).request.key
    assert key.num_steps == model.default_steps
    assert key.guidance_scale == model.default_guidance
    side = round(model.default_size / model.side_multiple) * model.side_multiple
    assert (key.height, key.width) == (side, side)


@pytest.mark.parametrize(
    "name", [n for n, m in CATALOGUE.items() if m.negative_prompt != "refused"]
)
def test_a_negative_prompt_is_used_or_ignored_as_the_model_does(name: str) -> None:
    key = caikit_job(caikit_body(negative_prompt="blurry"), settings_for(name)).request.key
    # A model that ignores the negative prompt does not split batches over it.
    used = CATALOGUE[name].negative_prompt == "used"
    assert key.negative_prompt == ("blurry" if used else None)


@pytest.mark.parametrize("name", ["flux.1-schnell", "flux.1-dev"])
def test_flux_refuses_a_negative_prompt_naming_the_field_and_the_family(name: str) -> None:
    with pytest.raises(
        InvalidInput, match=rf"^parameters.negative_prompt: {name} takes no negative"
    ):
        caikit_job(caikit_body(negative_prompt="blurry"), settings_for(name))
    body = OpenAIImageRequest.model_validate({"prompt": "a cat", "negative_prompt": "dogs"})
    with pytest.raises(InvalidInput, match="the flux family has no negative conditioning"):
        openai_job(body, settings_for(name))


# (model, the request's parameters, the message: field first, then the model's rule)
REFUSED = [
    (
        "flux.1-schnell",
        {"num_steps": 9},
        "parameters.num_steps: 9 exceeds the maximum of 8 for flux.1-schnell",
    ),
    (
        "flux.1-schnell",
        {"guidance_scale": 3.5},
        "parameters.guidance_scale: flux.1-schnell takes no guidance",
    ),
    (
        "flux.1-dev",
        {"guidance_scale": 25},
        "parameters.guidance_scale: 25 exceeds the maximum of 20 for flux.1-dev",
    ),
    (
        "sd3.5-large",
        {"height": 2048},
        "parameters.height: 2048 exceeds the maximum of 1440 pixels for sd3.5-large",
    ),
    ("sdxl", {"num_steps": 101}, "parameters.num_steps: 101 exceeds the maximum of 100 for sdxl"),
]


@pytest.mark.parametrize(("name", "parameters", "message"), REFUSED)
def test_a_request_outside_the_models_rules_is_refused(
    name: str, parameters: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidInput) as refused:
        caikit_job(caikit_body(**parameters), settings_for(name))
    assert str(refused.value).startswith(message)


def test_sizes_fit_the_family_multiple() -> None:
    key = caikit_job(caikit_body(height=1000, width=520), settings_for("flux.1-dev")).request.key
    assert (key.height, key.width) == (992, 512)  # multiples of 16 (2x2 latent patches)
    key = caikit_job(caikit_body(height=1000, width=520), settings_for("sdxl")).request.key
    assert (key.height, key.width) == (1000, 520)


def test_a_servers_limits_may_lower_the_models_but_not_raise_them() -> None:
    lowered = settings_for("sdxl", max_steps=10, max_side=512)
    with pytest.raises(InvalidInput, match="11 exceeds the maximum of 10 for sdxl"):
        caikit_job(caikit_body(num_steps=11), lowered)
    with pytest.raises(InvalidInput, match="exceeds the maximum of 512 pixels for sdxl"):
        caikit_job(caikit_body(height=520), lowered)
    raised = settings_for("flux.1-schnell", max_steps=50)
    with pytest.raises(InvalidInput, match=r"exceeds the maximum of 8 for flux\.1-schnell"):
        caikit_job(caikit_body(num_steps=9), raised)


def test_the_default_weights_are_the_catalogues() -> None:
    assert Settings(model="sdxl-turbo").resolved_model_path == "stabilityai/sdxl-turbo"
    assert Settings(model="stub").resolved_model_path == ""
    assert Settings(model="sdxl-turbo", model_path="/w").resolved_model_path == "/w"
    assert Settings(model="flux.1-dev").resolved_model_path == "black-forest-labs/FLUX.1-dev"
