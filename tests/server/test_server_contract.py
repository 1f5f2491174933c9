"""The HTTP contract, against a real uvicorn process and in-process (the `api` fixture).

After every test the server must still answer: a bad request never hurts it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from support.clients import image_of

from tti_contracts.catalogue import CATALOGUE, request_rules
from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE as CAIKIT
from tti_server.backends.stub import STUB_COLOR

OPENAI = "/v1/images/generations"


@pytest.fixture(autouse=True)
def still_serving(api: httpx.Client) -> Iterator[None]:
    yield
    assert api.get("/health").text == "OK"
    answer = api.post(CAIKIT, json={"inputs": "still there?", "parameters": {"height": 8}})
    assert answer.status_code == 200, answer.text


def caikit(api: httpx.Client, body: Any, **kwargs: Any) -> httpx.Response:
    return api.post(CAIKIT, json=body, **kwargs)


def assert_error(answer: httpx.Response, status: int, *fragments: str) -> dict[str, Any]:
    """The one envelope: code, details naming the field, id equal to X-Request-Id."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    body: dict[str, Any] = answer.json()
    assert set(body) == {"code", "details", "id"}
    assert body["code"] == status
    assert body["id"] == answer.headers["x-request-id"]
    assert "Traceback" not in body["details"]
    for fragment in fragments:
        assert fragment in body["details"]
    return body


# Probes and information


def test_health_is_plain_ok(api: httpx.Client) -> None:
    answer = api.get("/health")
    assert answer.status_code == 200
    assert answer.text == "OK"
    assert answer.headers["content-type"].startswith("text/plain")


def test_liveness_and_readiness(api: httpx.Client) -> None:
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}


def test_info_models_lists_the_loaded_model(api: httpx.Client) -> None:
    (model,) = api.get("/info/models").json()["models"]
    assert model == {
        "model_path": "",
        "name": "stub",
        "size": 0,
        "metadata": {
            "workers": 1,
            "devices": ["cpu"],
            "side_multiple": 1,
            "rules": {
                **request_rules(CATALOGUE["stub"]),
                "max_side": 1024,
                "max_steps": 8,
            },  # CONTRACT_FLAGS,
            "adapters": {},
        },
        "loaded": True,
        "module_id": "stub",
        "module_metadata": {"name": "tti-server stub", "version": "0.1.0"},
    }


def test_info_version_names_the_server_and_its_libraries(api: httpx.Client) -> None:
    info = api.get("/info/version").json()
    assert info["runtime_version"] == "0.1.0"
    assert {"tti-operator", "fastapi", "grpcio"} <= set(info["python_packages"])


def test_openai_models_lists_the_served_model(api: httpx.Client) -> None:
    listing = api.get("/v1/models").json()
    assert listing["object"] == "list"
    assert [(m["id"], m["object"]) for m in listing["data"]] == [("stub", "model")]


def test_metrics_count_requests_images_and_queue(api: httpx.Client) -> None:
    before = _images_generated(api)
    assert caikit(api, {"inputs": "count me"}).status_code == 200
    text = api.get("/metrics").text
    assert _images_generated(api) == before + 1
    assert (
        'tti_requests_total{method="POST",route="/api/v1/task/text-to-image",status="200"}' in text
    )
    assert (
        'tti_request_duration_seconds_bucket{le="0.005",route="/api/v1/task/text-to-image"}' in text
    )
    assert "tti_queue_depth 0.0" in text
    assert "tti_ready 1.0" in text


def test_openapi_describes_every_route(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    assert set(paths) >= {
        "/api/v1/task/text-to-image",
        "/v1/images/generations",
        "/v1/models",
        "/health",
        "/healthz",
        "/readyz",
        "/info/models",
        "/info/version",
        "/metrics",
    }


def test_every_response_carries_a_request_id(api: httpx.Client) -> None:
    for answer in (api.get("/health"), api.get("/nowhere"), caikit(api, {"inputs": 1})):
        assert len(answer.headers["x-request-id"]) == 32
    echoed = api.get("/healthz", headers={"X-Request-Id": "trace-42"})
    assert echoed.headers["x-request-id"] == "trace-42"
    rejected = api.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    assert rejected.headers["x-request-id"] != "bad id\twith spaces"


def _images_generated(api: httpx.Client) -> float:
    for line in api.get("/metrics").text.splitlines():
        if line.startswith("tti_images_generated_total "):
            return float(line.split()[1])
    raise AssertionError("tti_images_generated_total missing")


# caikit: POST /api/v1/task/text-to-image


def test_caikit_json_answer_has_the_stub_image(api: httpx.Client) -> None:
    body = {
        "model_id": "stub",
        "inputs": "a blue square",
        "parameters": {"height": 64, "width": 96},
    }
    answer = caikit(api, body)
    assert answer.status_code == 200
    data = answer.json()
    assert data["caption"] == "a blue square"
    assert data["producer_id"]["name"] == "tti-server stub"
    assert data["producer_id"]["version"]
    image = image_of(data["output"]["image_data"])
    assert (image.format, image.size) == ("PNG", (96, 64))
    assert image.getpixel((5, 5)) == STUB_COLOR


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_caikit_raw_bytes_by_accept_header(api: httpx.Client, fmt: str) -> None:
    answer = caikit(api, {"inputs": "raw"}, headers={"Accept": f"image/{fmt}"})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == f"image/{fmt}"
    image = image_of(answer.content)
    assert (image.format, image.size) == (fmt.upper(), (512, 512))


@pytest.mark.parametrize("given", ["JPEG", "Jpeg", "jpg", "webp", "PNG"])
def test_caikit_image_format_in_any_case(api: httpx.Client, given: str) -> None:
    answer = caikit(api, {"inputs": "fmt", "parameters": {"image_format": given, "height": 16}})
    image = image_of(answer.json()["output"]["image_data"])
    expected = {"jpg": "JPEG"}.get(given.lower(), given.upper())
    assert image.format == expected


def test_caikit_image_star_accept_uses_the_requested_format(api: httpx.Client) -> None:
    body = {"inputs": "star", "parameters": {"image_format": "webp", "height": 16, "width": 16}}
    answer = caikit(api, body, headers={"Accept": "image/*"})
    assert answer.headers["content-type"] == "image/webp"


def test_caikit_accept_naming_a_format_wins_over_image_format(api: httpx.Client) -> None:
    body = {"inputs": "wins", "parameters": {"image_format": "webp", "height": 16, "width": 16}}
    answer = caikit(api, body, headers={"Accept": "text/html, image/jpeg"})
    assert answer.headers["content-type"] == "image/jpeg"
    assert image_of(answer.content).format == "JPEG"


@pytest.mark.parametrize(("height", "width"), [(60, 100), (3, 4), (1, 1), (1024, 7)])
def test_the_stub_draws_the_size_asked_for_as_caikits_stub(
    api: httpx.Client, height: int, width: int
) -> None:
    answer = caikit(
        api,
        {"inputs": "exact", "parameters": {"height": height, "width": width}},
        headers={"Accept": "image/png"},
    )
    assert image_of(answer.content).size == (width, height)


@pytest.mark.parametrize(
    "parameters",
    [{"height": "64", "width": 64.0}, {"height": " 64 ", "width": "64.0"}, {"height": 64.0}],
)
def test_caikit_coerces_numbers_as_the_caikit_runtime(
    api: httpx.Client, parameters: dict[str, Any]
) -> None:
    body = {"inputs": "coerced", "parameters": {"width": 64, **parameters}}
    answer = caikit(api, body, headers={"Accept": "image/png"})
    assert image_of(answer.content).size == (64, 64)


@pytest.mark.parametrize("inputs", ["", "   "])
def test_caikit_takes_an_empty_prompt_as_caikits_modules(api: httpx.Client, inputs: str) -> None:
    answer = caikit(api, {"inputs": inputs, "parameters": {"height": 8, "width": 8}})
    assert answer.status_code == 200
    assert answer.json()["caption"] == inputs


@pytest.mark.parametrize("accept", ["text/plain", "image/gif", "text/html, */*;q=0.1", ""])
def test_caikit_ignores_an_accept_it_cannot_meet_as_the_caikit_runtime(
    api: httpx.Client, accept: str
) -> None:
    answer = caikit(api, {"inputs": "x", "parameters": {"height": 8}}, headers={"Accept": accept})
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert answer.json()["caption"] == "x"


FORMS: list[dict[str, str]] = [
    {"inputs": "form", "parameters.height": "16", "parameters.width": "24"},
    {"inputs": "form", "parameters": '{"height": 16, "width": 24}'},
    {"inputs": "form", "model_id": "stub", "parameters.height": "16", "parameters.width": "24"},
    {"inputs": "form", "parameters.height": "16", "parameters.width": "24", "parameters.seed": ""},
]


@pytest.mark.parametrize("form", FORMS)
def test_caikit_reads_multipart_forms_as_the_caikit_runtime(
    api: httpx.Client, form: dict[str, str]
) -> None:
    answer = api.post(CAIKIT, files={key: (None, value) for key, value in form.items()})
    assert answer.status_code == 200, answer.text
    assert answer.json()["caption"] == "form"
    assert image_of(answer.json()["output"]["image_data"]).size == (24, 16)


BAD_FORMS: list[tuple[dict[str, str], tuple[str, ...]]] = [
    ({"parameters.height": "16"}, ("inputs", "Field required")),
    ({"inputs": "x", "parameters.steps": "2"}, ("parameters.steps", "Extra inputs")),
    ({"inputs": "x", "parameters.height": "big"}, ("parameters.height", "integer")),
    ({"inputs": "x", "parameters": "{not json"}, ("parameters",)),
    (
        {"inputs": "x", "parameters": '{"height": 8}', "parameters.height": "8"},
        ("parameters", "more than once"),
    ),
]


@pytest.mark.parametrize(("form", "fragments"), BAD_FORMS)
def test_caikit_bad_forms_are_422(
    api: httpx.Client, form: dict[str, str], fragments: tuple[str, ...]
) -> None:
    answer = api.post(CAIKIT, files={key: (None, value) for key, value in form.items()})
    assert_error(answer, 422, *fragments)


def test_all_parameters_are_accepted(api: httpx.Client) -> None:
    parameters = {
        "height": 32,
        "width": 32,
        "num_steps": 2,
        "guidance_scale": 0.0,
        "negative_prompt": "blurry",
        "image_format": "png",
        "seed": 7,
    }
    assert caikit(api, {"inputs": "all", "parameters": parameters}).status_code == 200
    assert caikit(api, {"inputs": "null parameters", "parameters": None}).status_code == 200


# OpenAI: POST /v1/images/generations


def test_openai_generates_n_images_of_the_size(api: httpx.Client) -> None:
    answer = api.post(OPENAI, json={"prompt": "two", "n": 2, "size": "48x32"})
    assert answer.status_code == 200
    body = answer.json()
    assert isinstance(body["created"], int)
    assert body["size"] == "48x32"
    images = [image_of(item["b64_json"]) for item in body["data"]]
    assert [image.size for image in images] == [(48, 32), (48, 32)]


def test_openai_output_format_and_ignored_options(api: httpx.Client) -> None:
    body = {"prompt": "p", "size": "16x16", "output_format": "jpeg", "quality": "high"}
    answer = api.post(OPENAI, json=body)
    assert answer.json()["output_format"] == "jpeg"
    assert image_of(answer.json()["data"][0]["b64_json"]).format == "JPEG"


# Every bad input, naming the field. caikit's route: a body that is not the schema is
# 422 (as the caikit runtime), a value beyond a limit 400, another model 404.

BAD_CAIKIT: list[tuple[Any, int, tuple[str, ...]]] = [
    ({"parameters": {}}, 422, ("inputs", "Field required")),
    ({"inputs": 42}, 422, ("inputs", "valid string")),
    ({"inputs": "x" * 101}, 400, ("inputs", "101 characters", "maximum of 100")),
    ({"inputs": "x", "parameters": {"height": "big"}}, 422, ("parameters.height", "integer")),
    ({"inputs": "x", "parameters": {"width": 64.5}}, 422, ("parameters.width",)),
    ({"inputs": "x", "parameters": {"height": 0}}, 422, ("parameters.height", "greater than 0")),
    ({"inputs": "x", "parameters": {"width": -64}}, 422, ("parameters.width", "greater than 0")),
    ({"inputs": "x", "parameters": {"height": 100000}}, 400, ("parameters.height", "1024")),
    ({"inputs": "x", "parameters": {"width": 1025}}, 400, ("parameters.width", "1024")),
    ({"inputs": "x", "parameters": {"num_steps": 0}}, 422, ("parameters.num_steps",)),
    ({"inputs": "x", "parameters": {"num_steps": 9}}, 400, ("parameters.num_steps", "8")),
    ({"inputs": "x", "parameters": {"guidance_scale": -1}}, 422, ("parameters.guidance_scale",)),
    ({"inputs": "x", "parameters": {"image_format": "gif"}}, 422, ("parameters.image_format",)),
    ({"inputs": "x", "parameters": {"seed": -1}}, 422, ("parameters.seed",)),
    ({"inputs": "x", "parameters": {"negative_prompt": "n" * 101}}, 400, ("negative_prompt",)),
    ({"inputs": "x", "parameters": {"steps": 2}}, 422, ("parameters.steps", "Extra inputs")),
    ({"inputs": "x", "extra": 2}, 422, ("extra", "Extra inputs")),
    ({"inputs": "x", "parameters": [1]}, 422, ("parameters",)),
    ([1, 2], 422, ("body",)),
    ({"inputs": "x", "model_id": "other"}, 404, ("model_id", "'other'", "'stub'")),
]


@pytest.mark.parametrize(("body", "status", "fragments"), BAD_CAIKIT)
def test_caikit_bad_input(
    api: httpx.Client, body: Any, status: int, fragments: tuple[str, ...]
) -> None:
    assert_error(caikit(api, body), status, *fragments)


def test_malformed_json(api: httpx.Client) -> None:
    answer = api.post(CAIKIT, content=b'{"inputs": ', headers={"Content-Type": "application/json"})
    assert_error(answer, 422, "body: invalid JSON")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Content-Type": "text/plain"}, {"Content-Type": "application/x-www-form-urlencoded"}],
)
def test_a_body_neither_json_nor_a_form_is_415(api: httpx.Client, headers: dict[str, str]) -> None:
    answer = api.post(CAIKIT, content=b"inputs=cat", headers=headers)
    assert_error(answer, 415, "content-type", "application/json", "multipart/form-data")


def test_empty_body(api: httpx.Client) -> None:
    answer = api.post(CAIKIT, content=b"", headers={"Content-Type": "application/json"})
    assert_error(answer, 422, "body: Field required")


def test_openai_schema_errors_stay_400(api: httpx.Client) -> None:
    assert_error(api.post(OPENAI, content=b"prompt=cat"), 400, "body", "application/json")
    assert_error(api.post(OPENAI, json={"prompt": ""}), 400, "prompt", "at least 1")


@pytest.mark.parametrize("media", ["application/json; charset=utf-8", "application/x+json"])
def test_json_media_types_with_parameters_or_a_suffix(api: httpx.Client, media: str) -> None:
    body = json.dumps({"inputs": "x", "parameters": {"height": 8, "width": 8}})
    assert api.post(CAIKIT, content=body, headers={"Content-Type": media}).status_code == 200


def test_openapi_documents_the_generation_request_bodies(api: httpx.Client) -> None:
    paths = api.get("/openapi.json").json()["paths"]
    caikit_body = paths[CAIKIT]["post"]["requestBody"]["content"]["application/json"]
    openai_body = paths[OPENAI]["post"]["requestBody"]["content"]["application/json"]
    assert caikit_body["schema"] == {"$ref": "#/components/schemas/CaikitTextToImageRequest"}
    assert openai_body["schema"] == {"$ref": "#/components/schemas/OpenAIImageRequest"}


BAD_OPENAI: list[tuple[Any, int, tuple[str, ...]]] = [
    ({"n": 1}, 400, ("prompt", "Field required")),
    ({"prompt": "x", "n": 0}, 400, ("n", "greater than or equal to 1")),
    ({"prompt": "x", "n": 11}, 400, ("n", "less than or equal to 10")),
    ({"prompt": "x", "n": "2"}, 400, ("n", "integer")),
    ({"prompt": "x", "size": "big"}, 400, ("size", "WIDTHxHEIGHT")),
    ({"prompt": "x", "size": "0x64"}, 400, ("size (width)", "greater than 0")),
    ({"prompt": "x", "size": "64x100000"}, 400, ("size (height)", "1024")),
    ({"prompt": "x", "response_format": "url"}, 400, ("response_format", "b64_json")),
    ({"prompt": "x", "response_format": "svg"}, 400, ("response_format",)),
    ({"prompt": "x", "output_format": "gif"}, 400, ("output_format",)),
    ({"prompt": "x" * 101}, 400, ("prompt", "maximum of 100")),
    ({"prompt": "x", "model": "dall-e-3"}, 404, ("model", "dall-e-3")),
]


@pytest.mark.parametrize(("body", "status", "fragments"), BAD_OPENAI)
def test_openai_bad_input(
    api: httpx.Client, body: Any, status: int, fragments: tuple[str, ...]
) -> None:
    assert_error(api.post(OPENAI, json=body), status, *fragments)


def test_unknown_path_is_404_in_the_envelope(api: httpx.Client) -> None:
    assert_error(api.get("/api/v1/task/nothing"), 404, "path", "/api/v1/task/nothing")


def test_wrong_method_is_405_in_the_envelope(api: httpx.Client) -> None:
    assert_error(api.get(CAIKIT), 405, "method", "GET")
    assert_error(api.delete("/health"), 405, "method", "DELETE")


def test_error_bodies_are_json_even_for_many_errors(api: httpx.Client) -> None:
    parameters = {"height": "a", "width": "b", "num_steps": "c", "seed": "d", "image_format": 1}
    body = assert_error(caikit(api, {"inputs": 1, "parameters": parameters}), 422)
    assert "and 3 more" in body["details"]
    json.dumps(body)
