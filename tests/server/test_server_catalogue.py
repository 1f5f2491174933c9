"""The server takes each model's defaults from the catalogue the operator shares."""

from __future__ import annotations

import pytest

from tti_contracts.catalogue import CATALOGUE
from tti_server.generation import caikit_job
from tti_server.protocol import CaikitTextToImageRequest
from tti_server.settings import Settings


@pytest.mark.parametrize("name", list(CATALOGUE))
def test_defaults_of_a_request_are_the_models(name: str) -> None:
    model = CATALOGUE[name]
    settings = Settings(model=name, model_path="/models/x")  # type: ignore[arg-type]
    body = CaikitTextToImageRequest.model_validate(
        {"inputs": "a lighthouse", "parameters": {"negative_prompt": "blurry"}}
    )
    key = caikit_job(body, settings).request.key
    assert key.num_steps == model.default_steps
    assert key.guidance_scale == model.default_guidance
    # A model that ignores the negative prompt does not split batches over it.
    assert key.negative_prompt == ("blurry" if model.negative_prompt else None)


def test_the_default_weights_are_the_catalogues() -> None:
    assert Settings(model="sdxl-turbo").resolved_model_path == "stabilityai/sdxl-turbo"
    assert Settings(model="stub").resolved_model_path == ""
    assert Settings(model="sdxl-turbo", model_path="/w").resolved_model_path == "/w"
