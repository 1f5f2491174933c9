"""How tests talk to a served model (a `tti-server` or a gateway in front of one): the official
`openai` client, caikit's HTTP route, the images and error details that come back, and the
samples of its /metrics.

    with openai_client(server.url) as client:
        client.images.generate(...)
    with pytest.raises(openai.BadRequestError) as bad:
        openai_image(server, "sdxl", num_steps=99)
    assert details_of(bad.value).startswith("num_steps: ")
"""

from __future__ import annotations

import base64
import io
import time
from typing import Any

import httpx
import openai
from PIL import Image

from support.server import ServerProcess
from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE

PROMPT = "a lighthouse"


def openai_client(url: str, api_key: str = "unused", **options: Any) -> openai.OpenAI:
    """The official client of the API at `url`; it retries nothing, so a test sees each answer.
    Closed by `with`, its connections with it."""
    return openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, **options)


def image_of(data: str | bytes) -> Image.Image:
    """The image in `data` (base64 when a str, as JSON carries it), read in full."""
    image = Image.open(io.BytesIO(base64.b64decode(data) if isinstance(data, str) else data))
    image.load()
    return image


def details_of(error: openai.APIStatusError) -> str:
    """The error envelope's `details`: the client keeps the body of an error it cannot parse
    as the exception's body."""
    assert isinstance(error.body, dict)
    return str(error.body["details"])


def openai_image(server: ServerProcess, model: str, side: int = 64, **extra: Any) -> Image.Image:
    """One `side` x `side` image of `model` through the official client; `extra` goes into the
    body as it is (the server's extensions: `seed`, `num_steps`, ...)."""
    with openai_client(server.url) as client:
        result = client.images.generate(
            model=model, prompt=PROMPT, size=f"{side}x{side}", extra_body=extra
        )
    assert result.data and result.data[0].b64_json
    return image_of(result.data[0].b64_json)


def caikit_http(server: ServerProcess, model_id: str, **parameters: Any) -> httpx.Response:
    """caikit's text-to-image route through HTTP, with these `parameters` and no others."""
    body = {"model_id": model_id, "inputs": PROMPT, "parameters": parameters}
    return httpx.post(server.url + CAIKIT_TEXT_TO_IMAGE, json=body, timeout=120)


def sample(url: str, line_start: str) -> float:
    """The value of the first sample of `url`/metrics whose line starts with `line_start` (a
    metric's name and the start of its labels), 0 if none does."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def metric(url: str, name: str) -> float:
    """The value of one sample (`name` with its labels) of `url`/metrics (0 if it has none)."""
    return sample(url, name + " ")


def wait_for_metric(url: str, name: str, value: float, timeout: float = 30) -> None:
    """Poll until the metric has the value (a wait, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while metric(url, name) != value:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} never became {value}")
        time.sleep(0.02)
