"""LoRA adapters served by a real `tti-server` process with the tiny SDXL-Turbo pipeline and
tiny peft adapters, through every API: the official `openai` client (`model` "MODEL/ADAPTER"),
caikit HTTP (`model_id`) and caikit gRPC (`mm-model-id`, a grpcio client).

The same seed gives another image per adapter, and without one the image of a server that
has no adapters at all; an unknown adapter gets 404 / NOT_FOUND listing the adapters; one
made for another architecture is refused while the others serve; and the manifest is
watched: a rewritten file changes the adapters without a restart, a bad one changes nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import openai
import pytest
from support.clients import caikit_http, details_of, image_of, openai_image
from support.grpc_client import predict, vision_stub
from support.hf_endpoint import HubEndpoint
from support.server import ServerProcess, running_server
from support.tiny_model import TinyAdapters

from tti_server.tools.tiny_adapter import WEIGHT_NAME

MODEL = "tiny"
SIDE = 64


def write_manifest(path: Path, **adapters: Path) -> None:
    entries = [{"name": name, "scale": 1.0, "path": str(p)} for name, p in adapters.items()]
    path.write_text(json.dumps({"adapters": entries}))


def serve(log_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Any:
    return running_server(
        "--model", "sdxl-turbo", "--model-path", str(log_dir.parent / "model"),
        "--model-id", MODEL, "--max-batch-size", "4", "--batch-wait-ms", "20", *extra,
        log_dir=log_dir, env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def model_root(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Path:
    """A folder whose `model` is the tiny pipeline; servers log next to it."""
    root = tmp_path_factory.mktemp("adapters-served")
    (root / "model").symlink_to(tiny_model_dir)
    return root


@pytest.fixture(scope="module")
def adapted(model_root: Path, tiny_adapters: TinyAdapters) -> Iterator[ServerProcess]:
    manifest = model_root / "adapters.json"
    write_manifest(manifest, a=tiny_adapters.a, b=tiny_adapters.b, bad=tiny_adapters.mismatched)
    with serve(model_root / "adapted", "--adapters-file", str(manifest)) as server:
        yield server


@pytest.fixture(scope="module")
def plain(model_root: Path) -> Iterator[ServerProcess]:
    with serve(model_root / "plain") as server:
        yield server


def model_ids(server: ServerProcess) -> list[tuple[str, str | None]]:
    cards = httpx.get(server.url + "/v1/models").json()["data"]
    return [(card["id"], card["parent"]) for card in cards]


def test_each_adapter_changes_the_image_and_none_is_the_base(
    adapted: ServerProcess, plain: ServerProcess
) -> None:
    with_a = openai_image(adapted, f"{MODEL}/a", seed=7)
    with_b = openai_image(adapted, f"{MODEL}/b", seed=7)
    base = openai_image(adapted, MODEL, seed=7)
    assert len({with_a.tobytes(), with_b.tobytes(), base.tobytes()}) == 3
    assert base.tobytes() == openai_image(plain, MODEL, seed=7).tobytes()
    answer = caikit_http(adapted, f"{MODEL}/a", height=SIDE, width=SIDE, seed=7)
    assert answer.status_code == 200, answer.text
    assert image_of(answer.json()["output"]["image_data"]).tobytes() == with_a.tobytes()
    scaled = openai_image(adapted, f"{MODEL}/a", seed=7, adapter_scale=0)
    assert scaled.tobytes() == base.tobytes()
    with vision_stub(adapted.grpc_target) as stub:  # caikit's proto has no seed
        reply = predict(stub, model_id=f"{MODEL}/b", height=SIDE, width=SIDE, timeout=120)
    assert image_of(reply.output.image_data).size == (SIDE, SIDE)


def test_the_models_list_holds_each_loaded_adapter_with_its_parent(adapted: ServerProcess) -> None:
    assert model_ids(adapted) == [(MODEL, None), (f"{MODEL}/a", MODEL), (f"{MODEL}/b", MODEL)]


def test_an_unknown_adapter_is_not_found_listing_the_adapters(adapted: ServerProcess) -> None:
    listed = f"its adapters: '{MODEL}/a', '{MODEL}/b'"
    with pytest.raises(openai.NotFoundError) as unknown:
        openai_image(adapted, f"{MODEL}/zzz")
    assert details_of(unknown.value) == f"model: '{MODEL}' has no adapter 'zzz'; {listed}"
    answer = caikit_http(adapted, f"{MODEL}/zzz", height=SIDE, width=SIDE)
    assert answer.status_code == 404
    assert answer.json()["details"].startswith("model_id: ")
    assert listed in answer.json()["details"]
    with vision_stub(adapted.grpc_target) as stub, pytest.raises(grpc.RpcError) as refused:
        predict(stub, model_id=f"{MODEL}/zzz")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert (refused.value.details() or "").startswith("mm-model-id: ")
    assert listed in (refused.value.details() or "")


def test_an_adapter_of_another_architecture_is_refused_and_says_why(
    adapted: ServerProcess,
) -> None:
    [info] = httpx.get(adapted.url + "/info/models").json()["models"]
    adapters = info["metadata"]["adapters"]
    assert adapters["a"] == adapters["b"] == {"state": "loaded", "scale": 1.0}
    assert adapters["bad"]["state"] == "refused"
    reason = adapters["bad"]["reason"]
    assert reason.startswith("cannot load pytorch_lora_weights.safetensors: RuntimeError: ")
    assert "size mismatch" in reason
    answer = caikit_http(adapted, f"{MODEL}/bad", height=SIDE, width=SIDE)
    assert answer.status_code == 404
    assert answer.json()["details"] == f"model_id: adapter '{MODEL}/bad' was refused: {reason}"
    log = adapted.output().splitlines()
    states = [line for line in log if "tti_server.adapters: state" in line]
    last = json.loads(states[-1].split(": state ", 1)[1])
    assert last == {
        "a": {"state": "loaded"},
        "b": {"state": "loaded"},
        "bad": {"state": "refused", "reason": reason},
    }


def wait_for(what: str, check: Any, timeout: float = 60) -> None:
    """Poll until `check()` holds (a wait for the 2 s watcher, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"never: {what}")
        time.sleep(0.2)


def test_a_rewritten_manifest_changes_the_adapters_without_a_restart(
    model_root: Path, tiny_adapters: TinyAdapters
) -> None:
    manifest = model_root / "live.json"
    write_manifest(manifest, a=tiny_adapters.a)
    with serve(model_root / "live", "--adapters-file", str(manifest)) as server:
        assert model_ids(server) == [(MODEL, None), (f"{MODEL}/a", MODEL)]
        with_a = openai_image(server, f"{MODEL}/a", seed=3)
        write_manifest(manifest, b=tiny_adapters.b, c=tiny_adapters.a)
        expected = [(MODEL, None), (f"{MODEL}/b", MODEL), (f"{MODEL}/c", MODEL)]
        wait_for("b and c replace a", lambda: model_ids(server) == expected)
        assert openai_image(server, f"{MODEL}/c", seed=3).tobytes() == with_a.tobytes()
        with pytest.raises(openai.NotFoundError):
            openai_image(server, f"{MODEL}/a")
        manifest.write_text('{"adapters": [{"name": "B"}]}')
        wait_for("the bad manifest logged", lambda: "keeping the previous" in server.output())
        assert "adapters[0].name: 'B' is not a name" in server.output()
        assert model_ids(server) == expected
        assert openai_image(server, f"{MODEL}/b", seed=3).size == (SIDE, SIDE)
        assert server.process.poll() is None


def test_a_hub_adapter_is_fetched_by_the_server_and_a_missing_file_refused(
    model_root: Path, tiny_adapters: TinyAdapters, tmp_path: Path
) -> None:
    hub = HubEndpoint()
    hub.add_repo("tti-test/lora-b", tiny_adapters.b)
    manifest = tmp_path / "hub.json"
    entries = [
        {"name": name, "repo": "tti-test/lora-b", "file": file, "revision": "main"}
        for name, file in (("hub", WEIGHT_NAME), ("missing", "nope.safetensors"))
    ]
    manifest.write_text(json.dumps({"adapters": entries}))
    with hub:
        # No token, cache or hub setting of the caller's leaks in.
        env = {"HF_HOME": str(tmp_path / "home"), "HF_ENDPOINT": hub.url, "HF_TOKEN": ""}
        with serve(model_root / "hub", "--adapters-file", str(manifest), env=env) as server:
            [info] = httpx.get(server.url + "/info/models").json()["models"]
            adapters = info["metadata"]["adapters"]
            assert adapters["hub"] == {"state": "loaded", "scale": 1.0}
            assert adapters["missing"]["state"] == "refused"
            assert "EntryNotFoundError" in adapters["missing"]["reason"]
            assert openai_image(server, f"{MODEL}/hub", seed=1).size == (SIDE, SIDE)
    assert hub.bytes_sent("tti-test/lora-b")[WEIGHT_NAME] > 0
