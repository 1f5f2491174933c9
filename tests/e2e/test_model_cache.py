"""The model cache on the real node, every part real but the hub.

The chart's operator runs in a pod; each entry's claim is bound by a real provisioner
(Rancher's local-path-provisioner beside the kubelet); the fetch Job is a real pod running
`tti-server download` (the real `huggingface_hub` client); the model pods load the weights
from the claim, read-only, with the hub switched off. The hub cannot be reached from here:
`support.hf_endpoint` serves the tiny model as repositories, on this machine, with the
headers the client checks, and counts every byte it sends. It serves tiny LoRA adapters
(made with peft) as repositories too, fetched into each model's adapter claim.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support.cluster import Cluster
from support.hf_endpoint import HubEndpoint
from support.openai_pod import openai_from_pod
from support.realpods import (
    TIMEOUT_S,
    Release,
    exec_in,
    gateway_url,
    install,
    ready_condition,
    run_client,
    wait_for,
)
from support.realpods import wait_ready as wait_ready_bare
from support.tiny_model import TinyAdapters

from tti_server.tools.tiny_adapter import WEIGHT_NAME

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

REPO = "org/tiny-sdxl"
GATED = "org/gated-sdxl"
#: Repositories fetched only while the hub fails (500, no answer), then healthy again.
FLAKY = "org/flaky-sdxl"
SILENT = "org/silent-sdxl"
#: LoRA adapters of the tiny SDXL: two that change its images differently, one that misfits.
ADAPTERS = {"pixel": "org/pixel-lora", "ink": "org/ink-lora", "wrong": "org/wrong-lora"}
TOKEN = "hf_let_me_in"
#: Small enough for the real node's two cores, several at once: the tiny model on its CPU.
SMALL = {"requests": {"cpu": "100m", "memory": "512Mi"}}


@pytest.fixture(scope="module")
def hub(tiny_model_dir: Path, tiny_adapters: TinyAdapters) -> Iterator[HubEndpoint]:
    endpoint = HubEndpoint(host="0.0.0.0")
    for repo in (REPO, FLAKY, SILENT):
        endpoint.add_repo(repo, tiny_model_dir)
    made = {"pixel": tiny_adapters.a, "ink": tiny_adapters.b, "wrong": tiny_adapters.mismatched}
    for name, repo in ADAPTERS.items():
        endpoint.add_repo(repo, made[name])
    endpoint.add_repo(GATED, tiny_model_dir, {TOKEN})
    with endpoint:
        yield endpoint


@pytest.fixture(scope="module")
def release(cluster: Cluster, hub: HubEndpoint) -> Iterator[Release]:
    port = hub.url.rsplit(":", 1)[1]
    values = (
        f"modelCache.hubEndpoint=http://{cluster.host_address}:{port}",
        "modelCache.hubTimeoutSeconds=3",
    )
    with install(cluster, "mc", *values) as release:
        yield release


def from_hub(
    release: Release, name: str, repo: str, model: str = "sdxl-turbo", **spec: Any
) -> None:
    source = {"huggingFace": {"repo": repo, **spec.pop("huggingFace", {})}}
    release.apply_model(name, model=model, source=source, resources=SMALL, **spec)


def wait_ready(release: Release, name: str, timeout_s: float = TIMEOUT_S) -> Any:
    """Ready, or an error that shows what the model, its entry and the operator say."""
    try:
        return wait_ready_bare(release, name, timeout_s)
    except AssertionError as error:
        state = release.kubectl(
            "get", "ttimodel,pvc,job,pods", "-n", release.models, "-o", "wide", check=False
        )
        status = json.dumps(release.model(name).get("status"), indent=1)
        operator = release.kubectl(
            "logs", "-n", release.namespace, "-l", "app.kubernetes.io/component=operator",
            "--tail=40", check=False,
        )  # fmt: skip
        raise AssertionError(f"{error}\n{status}\n{state}\n{operator}") from None


def weights_condition(resource: Any) -> dict[str, Any]:
    conditions = resource.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "WeightsReady"), {})


def wait_failed(release: Release, name: str) -> str:
    """The model's WeightsReady message once its fetch has failed."""

    def failed() -> str:
        condition = weights_condition(release.model(name))
        return str(condition["message"]) if condition.get("reason") == "DownloadFailed" else ""

    return str(wait_for(f"ttimodel/{name} DownloadFailed", failed))


def test_weights_are_fetched_once_for_two_models_and_a_wake_from_zero(
    release: Release, hub: HubEndpoint, tmp_path: Path
) -> None:
    from_hub(release, "first", REPO)
    first = wait_ready(release, "first")
    commit = hub.repos[REPO].commit
    assert first["status"]["weights"]["commit"] == commit
    assert weights_condition(first)["reason"] == "Cached"
    fetched = hub.total_bytes_sent(REPO)
    assert fetched > 1_000_000  # the tiny pipeline's weights, once

    image = run_client(release, release.service_url("first"), "first", tmp_path)
    with Image.open(image) as png:
        assert png.size == (64, 64)

    # The pod reads the claim and nothing else: read-only, and the hub switched off.
    [pod] = release.pods("first")
    name = pod["metadata"]["name"]
    written = exec_in(release, release.models, name, "touch /weights/x")
    assert written.returncode != 0 and "Read-only file system" in written.stderr
    assert exec_in(release, release.models, name, "echo $HF_HUB_OFFLINE").stdout.strip() == "1"

    from_hub(release, "second", REPO)
    assert wait_ready(release, "second")["status"]["weights"]["commit"] == commit
    assert hub.total_bytes_sent(REPO) == fetched

    release.kubectl("scale", "ttimodel", "first", "-n", release.models, "--replicas=0")
    wait_for("first at zero", lambda: not release.pods("first"))
    release.kubectl("scale", "ttimodel", "first", "-n", release.models, "--replicas=1")
    wait_ready(release, "first")
    assert hub.total_bytes_sent(REPO) == fetched  # the wake read the cache
    release.kubectl("delete", "ttimodel", "first", "second", "-n", release.models)


def test_each_failure_names_its_cause_and_the_other_models_keep_serving(
    release: Release, hub: HubEndpoint
) -> None:
    from_hub(release, "serving", REPO)
    wait_ready(release, "serving")
    from_hub(release, "unknown", "org/no-such-model")
    from_hub(release, "gated", GATED)
    from_hub(
        release, "cramped", REPO, huggingFace={"revision": commit_of(hub)}, cache={"size": "1Mi"}
    )
    assert "unknown repository org/no-such-model" in wait_failed(release, "unknown")
    assert "gated repository org/gated-sdxl (no token was given)" in wait_failed(release, "gated")
    assert "disk full" in wait_failed(release, "cramped")
    assert "the cache holds 1.0 MB" in wait_failed(release, "cramped")

    # No pod burns a GPU (or a CPU) for a model without its weights.
    for name in ("unknown", "gated", "cramped"):
        assert release.pods(name) == []
        assert release.model(name)["status"]["phase"] == "DownloadFailed"

    # The token in a Secret, named in the resource: read by the fetch pod alone.
    release.kubectl(
        "create", "secret", "generic", "hf", "-n", release.models, f"--from-literal=token={TOKEN}"
    )
    from_hub(release, "allowed", GATED, huggingFace={"tokenSecret": {"name": "hf"}})
    wait_ready(release, "allowed")
    job_pods = release.get("pods", "-n", release.models, "-l", "tti.dev/weights")["items"]
    assert TOKEN not in json.dumps([p["spec"] for p in job_pods])

    hub.failure = "500"
    from_hub(release, "flaky", FLAKY)
    assert "hub error" in wait_failed(release, "flaky")
    hub.failure = "hang"
    from_hub(release, "silent", SILENT)
    assert "unreachable hub" in wait_failed(release, "silent")
    hub.reset()
    # Tried again with backoff: healthy again, the hub is asked again, and they recover.
    wait_ready(release, "flaky")
    wait_ready(release, "silent")
    assert wait_ready(release, "serving")["status"]["phase"] == "Ready"


def test_a_multi_step_family_serves_through_the_gateway_and_a_wrong_family_says_why(
    release: Release, tmp_path: Path
) -> None:
    """The tiny SDXL checkpoint as the `sdxl` row (30 steps, guidance 5 by default) through
    the gateway; the same checkpoint named as FLUX.1 is refused, its status naming both."""
    from_hub(release, "base", REPO, model="sdxl")
    wait_ready(release, "base")
    image = run_client(release, gateway_url(release), "base", tmp_path)
    with Image.open(image) as png:
        assert png.size == (64, 64)
    # Its previews streamed through the chart's gateway: the same final image as unstreamed.
    ask = {"model": "base", "prompt": "a lighthouse", "size": "64x64", "seed": 7, "num_steps": 4}
    streamed, plain = openai_from_pod(
        release, gateway_url(release), {**ask, "stream": True, "partial_images": 2}, ask
    )
    assert streamed.events == [
        *["image_generation.partial_image"] * 2,
        "image_generation.completed",
    ]
    assert streamed.image == plain.image is not None

    from_hub(release, "not-flux", REPO, model="flux.1-schnell")
    said = "is a StableDiffusionXLPipeline checkpoint, but flux.1-schnell is of the flux family"

    def refused() -> str:
        condition = ready_condition(release.model("not-flux"))
        return str(condition.get("message", "")) if said in condition.get("message", "") else ""

    message = wait_for("not-flux refused, naming both families", refused)
    assert "which loads FluxPipeline" in message
    release.kubectl("delete", "ttimodel", "base", "not-flux", "-n", release.models)


def adapters(*names: str) -> list[dict[str, Any]]:
    """spec.adapters: each from its hub repository."""
    return [
        {"name": name, "source": {"huggingFace": {"repo": ADAPTERS[name], "file": WEIGHT_NAME}}}
        for name in names
    ]


def adapters_condition(release: Release, name: str, reason: str) -> str:
    """The model's AdaptersReady message once its reason is `reason`."""

    def reached() -> str:
        conditions = release.model(name).get("status", {}).get("conditions", [])
        found = next((c for c in conditions if c["type"] == "AdaptersReady"), {})
        return str(found.get("message", "")) if found.get("reason") == reason else ""

    return str(wait_for(f"{name}'s AdaptersReady to be {reason}", reached))


def test_adapters_are_fetched_once_load_live_and_are_called_through_the_gateway(
    release: Release, hub: HubEndpoint
) -> None:
    """A model with two hub adapters, one of which misfits its UNet: the misfit is refused,
    named in the status, while the other serves through the gateway as MODEL/ADAPTER. Then
    the adapters change (the misfit out, a third in) and the same pod loads them live."""
    hub.reset()
    from_hub(release, "styled", REPO, adapters=adapters("pixel", "wrong"))
    wait_ready(release, "styled")
    refused = adapters_condition(release, "styled", "AdapterRefused")
    assert refused.startswith("adapter wrong refused:") and "size mismatch" in refused
    [pod] = release.pods("styled")
    ask = {"prompt": "a lighthouse", "size": "64x64", "seed": 7}
    base, pixel, oil = openai_from_pod(
        release,
        gateway_url(release),
        *({**ask, "model": model} for model in ("styled", "styled/pixel", "styled/oil")),
    )
    assert base.status == pixel.status == 200 and base.image != pixel.image
    assert oil.status == 404 and "its adapters: pixel, wrong" in str(oil.details)

    from_hub(release, "styled", REPO, adapters=adapters("pixel", "ink"))
    assert adapters_condition(release, "styled", "Loaded") == "2 adapters loaded"
    [same] = release.pods("styled")
    assert same["metadata"]["uid"] == pod["metadata"]["uid"]  # no restart
    ink, pixel_again = openai_from_pod(
        release,
        gateway_url(release),
        *({**ask, "model": model} for model in ("styled/ink", "styled/pixel")),
    )
    assert ink.image not in (None, base.image, pixel.image)
    assert pixel_again.image == pixel.image
    # Each adapter's file crossed from the hub once.
    for repo in ADAPTERS.values():
        assert hub.bytes_sent(repo) == {WEIGHT_NAME: hub.repos[repo].files[WEIGHT_NAME].size}
    release.kubectl("delete", "ttimodel", "styled", "-n", release.models)


def commit_of(hub: HubEndpoint) -> str:
    """A revision of its own, so that this entry is not the one the other models share."""
    return hub.repos[REPO].commit


#: Inductor compiles the tiny UNet's C++ kernels on the node's CPU: minutes, not seconds.
COMPILE_TIMEOUT_S = 900.0


def compile_line(release: Release, pod: Any) -> str:
    """The server's line saying what it compiled and how much came from the cache, which
    comes before the line saying the model is ready."""
    lines = release.kubectl("logs", pod["metadata"]["name"], "-n", release.models).splitlines()
    compiled = next(n for n, line in enumerate(lines) if "compiled unet and vae.decode" in line)
    ready = next(n for n, line in enumerate(lines) if " ready: " in line)
    assert compiled < ready
    return lines[compiled]


def replacement_ready(pods: list[Any], gone: Any) -> Any:
    """The one pod other than `gone`, once it is Ready; else None."""
    others = [pod for pod in pods if pod["metadata"]["uid"] != gone["metadata"]["uid"]]
    conditions = others[0].get("status", {}).get("conditions", []) if len(others) == 1 else []
    ready = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
    return others[0] if ready else None


def test_a_compiled_model_compiles_once_and_its_next_pod_loads_the_graphs_from_the_cache(
    release: Release, tmp_path: Path
) -> None:
    """`optimisation: compile` on the real node: the first pod compiles before it is Ready
    and leaves its graphs in the claim, beside the weights; the pod that replaces it finds
    every graph there."""
    compiled = {"optimisation": "compile", "maxBatchSize": 1}
    at_64 = [{"name": "TTI_DEFAULT_SIZE", "value": "64"}]  # requests' size is compiled
    from_hub(release, "compiled", REPO, env=at_64, **compiled)
    wait_ready(release, "compiled", COMPILE_TIMEOUT_S)
    [first] = release.pods("compiled")
    assert "(from the cache: 0 of " in compile_line(release, first)
    listing = exec_in(release, release.models, first["metadata"]["name"], "ls /compile-cache/*")
    assert "artifacts.bin" in listing.stdout and "inductor" in listing.stdout

    release.kubectl("delete", "pod", first["metadata"]["name"], "-n", release.models)
    second = wait_for(
        "the pod that replaces it, Ready",
        lambda: replacement_ready(release.pods("compiled"), first),
        COMPILE_TIMEOUT_S,
    )
    found = compile_line(release, second).split("(from the cache: ")[1].split(" graphs")[0]
    hits, graphs = (int(count) for count in found.split(" of "))
    assert hits == graphs > 0
    image = run_client(release, release.service_url("compiled"), "compiled", tmp_path)
    with Image.open(image) as png:
        assert png.size == (64, 64)
    release.kubectl("delete", "ttimodel", "compiled", "-n", release.models)
