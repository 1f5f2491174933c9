"""`tti-server --model sdxl-turbo` with the tiny model, through HTTP.

Most tests talk to one real `tti-server` process (two CPU workers, batching on).
Failure injection needs a backend wrapper, so those tests run the app factory
with injected backends under a real uvicorn on a loopback port, in this process.
Reference images come from the same tiny model loaded directly; an image that
went through a batch may differ from its reference by `BATCH_TOLERANCE`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from support.clients import image_of
from support.in_process import serve_in_thread
from support.server import ServerProcess, StartServer, running_server, server_command
from support.tiny_model import pixel_difference

from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE as CAIKIT
from tti_server.backends.base import BackendOutOfMemory, BatchKey, GenerationRequest
from tti_server.backends.diffusion import DiffusionBackend
from tti_server.settings import Settings

from .test_sdxl_backend import BATCH_TOLERANCE

OPENAI = "/v1/images/generations"
BATCH_WAIT_MS = 100


@pytest.fixture(scope="module")
def tiny_server(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    with running_server(
        "--model", "sdxl-turbo", "--model-path", str(tiny_model_dir),
        "--workers", "2", "--max-batch-size", "8", "--batch-wait-ms", str(BATCH_WAIT_MS),
        log_dir=tmp_path_factory.mktemp("sdxl-server"),
    ) as server:  # fmt: skip
        yield server


@pytest.fixture
def client(tiny_server: ServerProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=tiny_server.url, timeout=60) as http:
        yield http


def caikit_body(prompt: str, **parameters: Any) -> dict[str, Any]:
    return {"model_id": "sdxl-turbo", "inputs": prompt, "parameters": parameters}


def caikit_image(http: httpx.Client, prompt: str, **parameters: Any) -> Image.Image:
    response = http.post(CAIKIT, json=caikit_body(prompt, **parameters))
    assert response.status_code == 200, response.text
    assert response.json()["caption"] == prompt
    return image_of(response.json()["output"]["image_data"])


def reference(backend: DiffusionBackend, prompt: str, seed: int, size: int = 64) -> Image.Image:
    key = BatchKey(size, size, 1, 0.0, None)
    [[image]] = backend.generate([GenerationRequest(prompt, key, 1, seed)])
    return image


@pytest.mark.parametrize(
    ("image_format", "height", "width", "expected_size"),
    [
        ("png", 64, 64, (64, 64)),
        ("jpeg", 128, 72, (72, 128)),
        ("webp", 60, 100, (96, 64)),  # the nearest multiples of 8, ties to even (as caikit)
        ("png", 36, 36, (32, 32)),  # a tie: 4.5 eights rounds to 4
        ("PNG", 13, 3, (8, 16)),  # never rounded to 0
    ],
)
def test_caikit_formats_and_sizes(
    client: httpx.Client, image_format: str, height: int, width: int, expected_size: tuple[int, int]
) -> None:
    image = caikit_image(
        client, "a lighthouse", height=height, width=width, image_format=image_format, seed=1
    )
    assert image.format == image_format.upper()
    assert image.size == expected_size


@pytest.mark.parametrize("accept", ["image/png", "image/jpeg", "image/webp"])
def test_caikit_raw_image_bytes(client: httpx.Client, accept: str) -> None:
    body = caikit_body("a fox", height=64, width=72, seed=3)
    response = client.post(CAIKIT, json=body, headers={"Accept": accept})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == accept
    image = image_of(response.content)
    assert (image.get_format_mimetype(), image.size) == (accept, (72, 64))


def test_seed_gives_the_same_image_as_the_model_itself(
    client: httpx.Client, tiny_backend: DiffusionBackend
) -> None:
    first = caikit_image(client, "a red barn", height=64, width=64, seed=1234)
    again = caikit_image(client, "a red barn", height=64, width=64, seed=1234)
    other = caikit_image(client, "a red barn", height=64, width=64, seed=1235)
    assert pixel_difference(first, again) <= BATCH_TOLERANCE
    assert pixel_difference(first, other) > 10 * BATCH_TOLERANCE
    assert pixel_difference(first, reference(tiny_backend, "a red barn", 1234)) <= BATCH_TOLERANCE


def test_openai_n_images_are_consecutive_seeds(
    client: httpx.Client, tiny_backend: DiffusionBackend
) -> None:
    body = {"prompt": "a boat", "model": "sdxl-turbo", "n": 3, "size": "64x64", "seed": 50}
    response = client.post(OPENAI, json=body)
    assert response.status_code == 200, response.text
    images = [image_of(d["b64_json"]) for d in response.json()["data"]]
    assert len(images) == 3
    for offset, image in enumerate(images):
        assert image.size == (64, 64)
        assert (
            pixel_difference(image, reference(tiny_backend, "a boat", 50 + offset))
            <= BATCH_TOLERANCE
        )


def test_the_official_openai_client(tiny_server: ServerProcess) -> None:
    from openai import OpenAI

    with OpenAI(base_url=tiny_server.url + "/v1", api_key="unused") as openai:
        result = openai.images.generate(
            model="sdxl-turbo", prompt="a tree", n=2, size="64x64", extra_body={"seed": 9}
        )
    assert result.data is not None and len(result.data) == 2
    assert all(item.b64_json for item in result.data)


def batches_so_far(http: httpx.Client) -> int:
    text = http.get("/metrics").text
    match = re.search(r'^tti_batches_total\{outcome="ok"\} ([0-9.e+]+)$', text, re.MULTILINE)
    assert match, text
    return int(float(match.group(1)))


def test_concurrent_clients_each_get_their_own_image(
    client: httpx.Client, tiny_server: ServerProcess, tiny_backend: DiffusionBackend
) -> None:
    clients = 16
    start = threading.Barrier(clients)

    def one_client(index: int) -> Image.Image:
        with httpx.Client(base_url=tiny_server.url, timeout=120) as own:
            start.wait()
            return caikit_image(own, f"prompt {index}", height=64, width=64, seed=1000 + index)

    before = batches_so_far(client)
    with ThreadPoolExecutor(clients) as pool:
        images = list(pool.map(one_client, range(clients)))
    for index, image in enumerate(images):
        expected = reference(tiny_backend, f"prompt {index}", 1000 + index)
        assert pixel_difference(image, expected) <= BATCH_TOLERANCE, f"client {index}"
    # 16 requests arriving together within the batch window cannot need 16 calls.
    assert batches_so_far(client) - before < clients


def test_caikit_model_directory_serves(start_server: StartServer, tiny_caikit_dir: Path) -> None:
    server = start_server("--model", "sdxl-turbo", "--model-path", str(tiny_caikit_dir))
    with httpx.Client(base_url=server.url, timeout=60) as http:
        assert caikit_image(http, "a cat", height=64, width=64, seed=1).size == (64, 64)


# --- a model that does not load: non-zero exit, one clear line -----------------------


def failed_start(start_server: StartServer, model_path: Path) -> str:
    server = start_server(
        "--model", "sdxl-turbo", "--model-path", str(model_path), wait_ready=False
    )
    assert server.wait_exit(timeout=120) != 0
    output = server.output()
    assert "Traceback" not in output, output
    errors = [line for line in output.splitlines() if line.startswith("tti-server: error: ")]
    assert len(errors) == 1, output
    return errors[0]


def test_missing_model_directory_exits_non_zero(start_server: StartServer, tmp_path: Path) -> None:
    missing = tmp_path / "no-model"
    line = failed_start(start_server, missing)
    assert line.endswith(f"model directory {missing} does not exist")


def test_corrupt_model_directory_exits_non_zero(
    start_server: StartServer, tiny_model_dir: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt"
    shutil.copytree(tiny_model_dir, corrupt)
    weights = corrupt / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"not a safetensors file")
    line = failed_start(start_server, corrupt)
    assert f"cannot load diffusers directory {corrupt}: " in line


def test_make_tiny_model_command(tmp_path: Path) -> None:
    target = tmp_path / "tiny"
    done = subprocess.run(
        [*server_command(), "make-tiny-model", str(target)], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert (target / "model_index.json").is_file()
    assert (target / "unet" / "diffusion_pytorch_model.safetensors").is_file()


# --- failures injected into one batch: the others succeed, the worker lives on --------


class FailingBackend:
    """The real tiny backend, except that a batch with a 'poison' or 'oom' prompt fails."""

    def __init__(self, inner: DiffusionBackend) -> None:
        self.inner = inner
        self.name = inner.name
        self.device = inner.device
        self.released = 0

    def generate(self, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
        prompts = {request.prompt for request in batch}
        if "poison" in prompts:
            raise RuntimeError("injected failure")
        if "oom" in prompts:
            raise BackendOutOfMemory("injected out of memory")
        return self.inner.generate(batch)

    def release_memory(self) -> None:
        self.released += 1
        self.inner.release_memory()


@pytest.mark.parametrize(("bad_prompt", "status"), [("poison", 500), ("oom", 503)])
def test_a_failing_batch_fails_only_its_requests(
    tiny_backend: DiffusionBackend, bad_prompt: str, status: int
) -> None:
    backend = FailingBackend(tiny_backend)
    settings = Settings(model="sdxl-turbo", max_batch_size=8, batch_wait_ms=BATCH_WAIT_MS)
    with serve_in_thread(backend, settings) as url:
        clients = 7
        start = threading.Barrier(clients)

        def post(index: int) -> httpx.Response:
            # The bad request has its own size, so it cannot share a batch with the others.
            prompt, size = (bad_prompt, 72) if index == 0 else (f"good {index}", 64)
            body = caikit_body(prompt, height=size, width=size, seed=index)
            with httpx.Client(base_url=url, timeout=120) as http:
                start.wait()
                return http.post(CAIKIT, json=body)

        with ThreadPoolExecutor(clients) as pool:
            bad, *good = list(pool.map(post, range(clients)))
        assert bad.status_code == status, bad.text
        assert bad.json()["code"] == status
        assert "Traceback" not in bad.text
        assert backend.released == 1
        for index, response in enumerate(good, start=1):
            assert response.status_code == 200, response.text
            image = image_of(response.json()["output"]["image_data"])
            assert (
                pixel_difference(image, reference(tiny_backend, f"good {index}", index))
                <= BATCH_TOLERANCE
            )
        # The worker keeps serving after the failure.
        with httpx.Client(base_url=url, timeout=60) as http:
            assert caikit_image(http, "after", height=64, width=64, seed=1).size == (64, 64)
