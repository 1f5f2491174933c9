"""The official `openai` client, unchanged, against a real server on a loopback port."""

from __future__ import annotations

import openai
import pytest
from support.clients import details_of, image_of, openai_client
from support.server import ServerProcess

from tti_server.backends.stub import STUB_COLOR


@pytest.fixture
def client(contract_server: ServerProcess) -> openai.OpenAI:
    return openai_client(contract_server.url)


def test_images_generate(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="stub", prompt="a lighthouse", n=3, size="64x48", response_format="b64_json"
    )
    assert result.data is not None and len(result.data) == 3
    for item in result.data:
        assert item.b64_json is not None
        image = image_of(item.b64_json)
        assert (image.format, image.size) == ("PNG", (64, 48))
        assert image.convert("RGB").getpixel((0, 0)) == STUB_COLOR


def test_images_generate_with_output_format_and_extensions(client: openai.OpenAI) -> None:
    result = client.images.generate(
        prompt="webp please",
        size="32x32",
        output_format="webp",
        extra_body={"seed": 3, "num_steps": 2},
    )
    assert result.output_format == "webp"
    assert result.data is not None and result.data[0].b64_json is not None
    image = image_of(result.data[0].b64_json)
    assert image.format == "WEBP"


def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [model.id for model in models.data] == ["stub"]


def test_errors_surface_as_openai_exceptions(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(prompt="x", n=11)
    assert bad.value.status_code == 400
    # The client keeps our error envelope as the exception's body.
    assert details_of(bad.value) == "n: Input should be less than or equal to 10"
    with pytest.raises(openai.BadRequestError) as url:
        client.images.generate(prompt="x", response_format="url")
    assert details_of(url.value).startswith("response_format: 'url' is not supported")
    with pytest.raises(openai.NotFoundError) as missing:
        client.images.generate(prompt="x", model="dall-e-3")
    assert "dall-e-3" in details_of(missing.value)


def test_a_stream_from_the_stub_is_just_the_completed_images(client: openai.OpenAI) -> None:
    """The stub draws in one go: there is nothing to preview, whatever is asked."""
    plain = client.images.generate(prompt="blue", n=2, size="24x16", extra_body={"seed": 1})
    events = list(
        client.images.generate(
            prompt="blue", n=2, size="24x16", stream=True, partial_images=3, extra_body={"seed": 1}
        )
    )
    assert [(event.type, event.image_index) for event in events] == [  # type: ignore[union-attr]
        ("image_generation.completed", 0),
        ("image_generation.completed", 1),
    ]
    assert plain.data is not None
    assert [event.b64_json for event in events] == [item.b64_json for item in plain.data]
    assert {(event.size, event.output_format) for event in events} == {("24x16", "png")}


@pytest.mark.parametrize(
    ("fields", "details"),
    [
        ({"partial_images": 4}, "partial_images: Input should be less than or equal to 3"),
        ({"partial_images": -1}, "partial_images: Input should be greater than or equal to 0"),
        ({"partial_images": "2"}, "partial_images: Input should be a valid integer"),
        ({"partial_images": 1.5}, "partial_images: Input should be a valid integer"),
        ({"stream": "yes"}, "stream: Input should be a valid boolean"),
        ({"stream": 1}, "stream: Input should be a valid boolean"),
    ],
)
def test_bad_stream_fields_are_refused_naming_them(
    client: openai.OpenAI, fields: dict[str, object], details: str
) -> None:
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(prompt="x", extra_body=fields)
    assert details_of(bad.value) == details
