"""Every family of the catalogue served by a real `tti-server` process from its tiny offline
pipeline, through every API: caikit HTTP, caikit gRPC (a grpcio client) and OpenAI's
(the official `openai` client). Bad requests get the family's rule, naming the field, on
each; a checkpoint of another family is refused at load, naming both.

One server per catalogue model below (each loads its family's tiny pipeline on the CPU).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from support.clients import caikit_http, details_of, image_of, openai_image
from support.grpc_client import predict, vision_stub
from support.server import ServerProcess, StartServer, running_server

from tti_contracts.catalogue import CATALOGUE

#: A catalogue model of each family -> the tiny pipeline it loads (`tiny_family_dirs`).
SERVED = {
    "sdxl": "sdxl",
    "sd3.5-large": "sd3",
    "flux.1-schnell": "flux-schnell",
    "flux.1-dev": "flux-dev",
}
SIDE = 64
STEPS = 2


@pytest.fixture(scope="module", params=list(SERVED))
def served(
    request: pytest.FixtureRequest,
    tiny_family_dirs: dict[str, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[str, ServerProcess]]:
    name = request.param
    with running_server(
        "--model", name, "--model-path", str(tiny_family_dirs[SERVED[name]]),
        "--max-batch-size", "4", "--batch-wait-ms", "50",
        log_dir=tmp_path_factory.mktemp(f"{name}-server"),
    ) as server:  # fmt: skip
        yield name, server


def test_each_api_draws_and_a_seed_gives_the_same_image(served: tuple[str, ServerProcess]) -> None:
    name, server = served
    answer = caikit_http(server, name, height=SIDE, width=SIDE, num_steps=STEPS, seed=7)
    assert answer.status_code == 200, answer.text
    by_http = image_of(answer.json()["output"]["image_data"])
    with vision_stub(server.grpc_target) as stub:  # caikit's proto has no seed
        by_grpc = predict(
            stub, model_id=name, inputs="a lighthouse", height=SIDE, width=SIDE,
            num_steps=STEPS, timeout=120,
        )  # fmt: skip
    by_openai = openai_image(server, name, num_steps=STEPS, seed=7)
    assert by_http.size == image_of(by_grpc.output.image_data).size == (SIDE, SIDE)
    assert by_http.tobytes() == by_openai.tobytes()
    other = openai_image(server, name, num_steps=STEPS, seed=8)
    assert other.tobytes() != by_http.tobytes()


def test_a_size_goes_to_the_familys_multiple(served: tuple[str, ServerProcess]) -> None:
    name, server = served
    answer = caikit_http(server, name, height=72, width=40, num_steps=1, seed=1)
    assert answer.status_code == 200, answer.text
    image = image_of(answer.json()["output"]["image_data"])
    multiple = CATALOGUE[name].side_multiple
    assert image.size == (round(40 / multiple) * multiple, round(72 / multiple) * multiple)


def test_too_many_steps_are_refused_on_every_api(served: tuple[str, ServerProcess]) -> None:
    name, server = served
    steps = CATALOGUE[name].max_steps + 1
    said = f"exceeds the maximum of {steps - 1} for {name}"
    answer = caikit_http(server, name, num_steps=steps)
    assert answer.status_code == 400
    assert answer.json()["details"].startswith(f"parameters.num_steps: {steps} {said}")
    with vision_stub(server.grpc_target) as stub, pytest.raises(grpc.RpcError) as refused:
        predict(stub, model_id=name, num_steps=steps)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert said in (refused.value.details() or "")
    with pytest.raises(openai.BadRequestError) as bad:
        openai_image(server, name, num_steps=steps)
    assert said in details_of(bad.value)


def test_guidance_follows_the_familys_rule(served: tuple[str, ServerProcess]) -> None:
    name, server = served
    model = CATALOGUE[name]
    if model.max_guidance == 0:  # FLUX.1-schnell: distilled without guidance
        answer = caikit_http(server, name, guidance_scale=3.5)
        assert answer.status_code == 400
        assert "parameters.guidance_scale: flux.1-schnell takes no guidance" in answer.text
        return
    low = openai_image(server, name, num_steps=STEPS, seed=3, guidance_scale=1.0)
    high = openai_image(server, name, num_steps=STEPS, seed=3, guidance_scale=7.0)
    assert low.tobytes() != high.tobytes()  # CFG (SDXL, SD3) or the embedding (FLUX.1-dev)


def test_the_negative_prompt_follows_the_familys_rule(served: tuple[str, ServerProcess]) -> None:
    name, server = served
    if CATALOGUE[name].negative_prompt == "refused":
        answer = caikit_http(server, name, negative_prompt="fog")
        assert answer.status_code == 400
        assert answer.json()["details"].startswith(
            f"parameters.negative_prompt: {name} takes no negative prompt"
        )
        with pytest.raises(openai.BadRequestError) as bad:
            openai_image(server, name, negative_prompt="fog")
        assert details_of(bad.value).startswith(f"negative_prompt: {name} takes no negative prompt")
        return
    plain = openai_image(server, name, num_steps=STEPS, seed=3, guidance_scale=5.0)
    steered = openai_image(
        server, name, num_steps=STEPS, seed=3, guidance_scale=5.0, negative_prompt="fog"
    )
    assert plain.tobytes() != steered.tobytes()


def test_the_server_publishes_the_models_rules(served: tuple[str, ServerProcess]) -> None:
    name, server = served
    [info] = httpx.get(server.url + "/info/models").json()["models"]
    rules = info["metadata"]["rules"]
    model = CATALOGUE[name]
    assert (rules["family"], rules["max_steps"], rules["default_steps"]) == (
        model.family, model.max_steps, model.default_steps
    )  # fmt: skip


def test_a_checkpoint_of_another_family_is_refused_naming_both(
    tiny_family_dirs: dict[str, Path], start_server: StartServer
) -> None:
    server = start_server(
        "--model", "flux.1-dev", "--model-path", str(tiny_family_dirs["sd3"]), wait_ready=False
    )
    assert server.wait_exit(timeout=120) == 1
    last = server.output().strip().splitlines()[-1]
    assert "is a StableDiffusion3Pipeline checkpoint, but flux.1-dev is of the flux family" in last
    assert "which loads FluxPipeline" in last
