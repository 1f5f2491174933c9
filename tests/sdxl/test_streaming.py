"""Streamed partial images (OpenAI's `stream` + `partial_images`) with the official client.

Real `tti-server` processes serve the tiny multi-step SDXL and FLUX.1-dev pipelines (4 and
16 latent channels, FLUX.1's packed); failure injection runs the app in this process with
a wrapped real backend, as tests/sdxl/test_sdxl_http.py does.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from PIL import Image
from support.clients import image_of, metric, openai_client
from support.gateway import launch_gateway
from support.in_process import serve_in_thread
from support.server import ServerProcess, running_server

from tti_contracts.routes import OPENAI_IMAGES as OPENAI
from tti_server.backends.base import GenerationRequest, PreviewSink
from tti_server.backends.diffusion import DiffusionBackend
from tti_server.backends.previews import preview_steps
from tti_server.settings import Settings

PARTIAL = "image_generation.partial_image"
COMPLETED = "image_generation.completed"
BATCHES = 'tti_batches_total{outcome="ok"}'


@pytest.fixture(scope="module")
def sdxl_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with running_server(
        "--model", "sdxl", "--model-path", str(tiny_model_dir),
        log_dir=tmp_path_factory.mktemp("stream-sdxl"),
    ) as server:  # fmt: skip
        yield server


def stream_events(client: openai.OpenAI, **fields: Any) -> list[Any]:
    """Every event of one streamed request (`num_steps` and `seed` are extensions)."""
    extra = {name: fields.pop(name) for name in ("num_steps", "seed") if name in fields}
    return list(client.images.generate(prompt="a kite", stream=True, extra_body=extra, **fields))


def plain_images(client: openai.OpenAI, **fields: Any) -> list[bytes]:
    extra = {name: fields.pop(name) for name in ("num_steps", "seed") if name in fields}
    result = client.images.generate(prompt="a kite", extra_body=extra, **fields)
    assert result.data is not None
    return [base64.b64decode(item.b64_json or "") for item in result.data]


def check_stream(events: list[Any], n: int, partials: int, size: str) -> None:
    """Per image: its partial images in order, all before the completed events (one each,
    in image order), every one at the requested size."""
    kinds = [event.type for event in events]
    assert kinds == [PARTIAL] * (n * partials) + [COMPLETED] * n
    for index in range(n):
        mine = [
            e.partial_image_index for e in events if e.type == PARTIAL and e.image_index == index
        ]
        assert mine == list(range(partials))
    assert [e.image_index for e in events if e.type == COMPLETED] == list(range(n))
    width, height = (int(side) for side in size.split("x"))
    for event in events:
        assert (event.size, event.output_format) == (size, "png")
        assert image_of(event.b64_json).size == (width, height)


@pytest.mark.parametrize(
    ("steps", "asked", "taken_after"),
    [(30, 3, [7, 15, 22]), (28, 1, [14]), (6, 2, [2, 4]), (2, 3, [1]), (1, 3, []), (50, 0, [])],
)
def test_preview_steps_are_evenly_spaced_and_never_the_last(
    steps: int, asked: int, taken_after: list[int]
) -> None:
    assert preview_steps(steps, asked) == taken_after


@pytest.mark.parametrize(
    ("steps", "asked", "sent"),
    [(4, 3, 3), (2, 3, 1), (1, 3, 0), (3, 0, 0)],
)
def test_partial_images_then_the_image_the_plain_request_gets(
    sdxl_server: ServerProcess, steps: int, asked: int, sent: int
) -> None:
    """Evenly spaced steps, never the last: fewer than asked when the steps are few."""
    assert len(preview_steps(steps, asked)) == sent
    fields = {"n": 2, "size": "64x48", "num_steps": steps, "seed": 11}
    with openai_client(sdxl_server.url) as client:
        events = stream_events(client, partial_images=asked, **fields)
        plain = plain_images(client, **fields)
    check_stream(events, n=2, partials=sent, size="64x48")
    assert [base64.b64decode(e.b64_json) for e in events if e.type == COMPLETED] == plain


def test_through_a_gateway_process_the_stream_is_the_servers(
    sdxl_server: ServerProcess, tmp_path: Path
) -> None:
    """The real gateway in front of the real server: the same events and the same final
    image as straight from the server, with the official client on the gateway's URL."""
    gateway = launch_gateway(("--models", f"sdxl={sdxl_server.url}"), tmp_path / "gateway")
    try:
        fields = {"model": "sdxl", "size": "64x64", "num_steps": 6, "seed": 3}
        with openai_client(gateway.url) as client:
            events = stream_events(client, partial_images=2, **fields)
        with openai_client(sdxl_server.url) as client:
            straight = stream_events(client, partial_images=2, **fields)
    finally:
        gateway.stop()
    check_stream(events, n=1, partials=2, size="64x64")
    assert [e.b64_json for e in events] == [e.b64_json for e in straight]


def test_the_previews_show_the_image_forming(sdxl_server: ServerProcess) -> None:
    """Each preview is a picture of its own (not a copy of the last one)."""
    with openai_client(sdxl_server.url) as client:
        events = stream_events(client, size="64x64", partial_images=3, num_steps=8)
    previews = [image_of(e.b64_json).tobytes() for e in events if e.type == PARTIAL]
    assert len(previews) == 3 and len(set(previews)) == 3


def test_flux_previews_unpack_its_sixteen_channel_latents(
    tiny_family_dirs: dict[str, Path], tmp_path: Path
) -> None:
    with running_server(
        "--model", "flux.1-dev", "--model-path", str(tiny_family_dirs["flux-dev"]),
        log_dir=tmp_path,
    ) as server, openai_client(server.url) as client:  # fmt: skip
        events = stream_events(client, size="64x96", partial_images=2, num_steps=4, seed=5)
        check_stream(events, n=1, partials=2, size="64x96")
        plain = plain_images(client, size="64x96", num_steps=4, seed=5)
        assert [base64.b64decode(events[-1].b64_json)] == plain


# --- failures and departures -----------------------------------------------------------


class FailsAfterFirstPreview:
    """The real tiny backend, except that a 'poison' request's first preview raises after
    it is delivered: the batch fails mid-denoise, after the stream has started."""

    def __init__(self, inner: DiffusionBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.device = inner.device

    def generate(self, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
        return self.inner.generate([self._poisoned(request) for request in batch])

    def release_memory(self) -> None:
        self.inner.release_memory()

    @staticmethod
    def _poisoned(request: GenerationRequest) -> GenerationRequest:
        sink = request.on_preview
        if request.prompt != "poison" or sink is None:
            return request

        def deliver_then_fail(index: int, partial_index: int, image: Image.Image) -> None:
            sink(index, partial_index, image)
            raise RuntimeError("injected failure")

        preview: PreviewSink = deliver_then_fail
        return replace(request, on_preview=preview)


def test_a_failure_mid_stream_is_an_error_event(tiny_backend: DiffusionBackend) -> None:
    backend = FailsAfterFirstPreview(tiny_backend)
    settings = Settings(model="sdxl", max_batch_size=8, batch_wait_ms=100)
    with serve_in_thread(backend, settings) as url, openai_client(url) as client:
        stream = client.images.generate(
            prompt="poison", size="64x64", stream=True, partial_images=2,
            extra_body={"num_steps": 6},
        )  # fmt: skip
        received: list[Any] = []
        with pytest.raises(openai.APIError) as failed:
            received.extend(stream)
        assert [event.type for event in received] == [PARTIAL]
        assert failed.value.message == "generation failed: RuntimeError: injected failure"
        assert isinstance(failed.value.body, dict)
        assert failed.value.body["code"] == 500
        # The worker goes on serving, streamed or not.
        events = stream_events(client, size="64x64", partial_images=1, num_steps=2)
        assert [event.type for event in events] == [PARTIAL, COMPLETED]


def test_a_client_that_leaves_is_dropped_and_its_batch_finishes(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A streamed and a plain request share one batch (sent together, inside its window);
    the streamed client reads one preview and leaves; the plain one gets its image, and
    nothing fails."""
    with running_server(
        "--model", "sdxl", "--model-path", str(tiny_model_dir),
        "--max-batch-size", "2", "--batch-wait-ms", "1000",
        log_dir=tmp_path,
    ) as server, httpx.Client(base_url=server.url, timeout=120) as http:  # fmt: skip
        before = metric(server.url, BATCHES)
        body = {"prompt": "a kite", "size": "64x64", "num_steps": 8, "seed": 1}
        plain: dict[str, httpx.Response] = {}

        def post_plain() -> None:
            with httpx.Client(base_url=server.url, timeout=120) as own:
                plain["answer"] = own.post(OPENAI, json=body)

        other = threading.Thread(target=post_plain)
        streamed = {**body, "stream": True, "partial_images": 3}
        with http.stream("POST", OPENAI, json=streamed) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            other.start()
            lines = response.iter_lines()
            assert next(lines) == f"event: {PARTIAL}"
        other.join()
        assert plain["answer"].status_code == 200, plain["answer"].text
        assert len(plain["answer"].json()["data"]) == 1
        assert metric(server.url, BATCHES) - before == 1
        # The server goes on (two images fill a batch at once), and logged no failure.
        with openai_client(server.url) as client:
            events = stream_events(client, n=2, size="64x64", partial_images=1, num_steps=2)
        assert [event.type for event in events] == [PARTIAL, PARTIAL, COMPLETED, COMPLETED]
    output = server.output()
    assert " ERROR " not in output and "Traceback" not in output, output
