"""Autoscaling and the gateway on the real node: real servers answering real requests.

One release of the chart serves the module, with its gateway (bearer tokens on) and an
autoscaler that looks every second. The stub model is made slow (`TTI_STUB_LATENCY_MS`, one
image per pipeline call), so a client's requests stay in flight as an image model's do on a
GPU and the load the autoscaler reads follows the clients' concurrency. Only the GPU is
simulated.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support import loadgen
from support.cluster import Cluster
from support.realpods import (
    TIMEOUT_S,
    Release,
    gateway_pod,
    gateway_url,
    install,
    pod_finished,
    run_client,
    start_python_pod,
    wait_for,
    wait_ready,
)

from tti_server.backends.stub import STUB_COLOR

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

TOKEN = "e2e-token-7c1d"
LOADGEN = Path(loadgen.__file__).read_text()
HOLD_S = 40
#: Each request one 500 ms pipeline call of its own: in flight for almost all of a client's time.
SLOW: dict[str, Any] = {
    "maxBatchSize": 1,
    "env": [{"name": "TTI_STUB_LATENCY_MS", "value": "500"}],
    "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
}
SMALL: dict[str, Any] = {"resources": {"requests": {"cpu": "50m", "memory": "128Mi"}}}


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    values = ("operator.autoscaleIntervalSeconds=1", f"gateway.holdTimeoutSeconds={HOLD_S}")
    with install(cluster, "as", *values, tokens=TOKEN) as release:
        yield release


def autoscaling(least: int, most: int, target: float, delay: int) -> dict[str, Any]:
    return {
        "minReplicas": least,
        "maxReplicas": most,
        "targetInFlight": target,
        "scaleDownDelaySeconds": delay,
    }


def replicas(release: Release, name: str) -> int:
    return int(release.model(name)["spec"].get("replicas", 1))


def ready_pods(release: Release, name: str) -> int:
    return int(release.model(name).get("status", {}).get("ready", "0/0").split("/")[0])


def start_load(release: Release, model: str, concurrency: int, seconds: float) -> str:
    args = ["load", model, str(concurrency), str(seconds), gateway_url(release), "--token", TOKEN]
    return start_python_pod(release, "load", LOADGEN, *args)


def at_once(
    release: Release, name: str, requests: dict[str, Any], timeout_s: float = TIMEOUT_S
) -> Any:
    """Named requests sent at once through the gateway from a client pod; their results."""
    args = ["at-once", gateway_url(release), json.dumps(requests)]
    pod = start_python_pod(release, name, LOADGEN, *args)
    return json.loads(pod_finished(release, pod, timeout_s).strip().splitlines()[-1])


def load_result(release: Release, pod: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(pod_finished(release, pod).strip().splitlines()[-1])
    return result


def events(release: Release, name: str, reason: str) -> list[Any]:
    selector = f"involvedObject.name={name},reason={reason}"
    items: list[Any] = release.get("events", "-n", release.models, "--field-selector", selector)[
        "items"
    ]
    return items


def at_zero(release: Release, name: str) -> bool:
    return replicas(release, name) == 0 and not release.pods(name)


def gateway_get(release: Release, path: str, token: str | None = TOKEN) -> Any:
    """GET on the gateway pod, from the host (which reaches pod IPs over the node's bridge);
    /metrics is on the pod's metrics port (the chart's default)."""
    ip = gateway_pod(release)["status"]["podIP"]
    port = 9090 if path == "/metrics" else 8080
    request = urllib.request.Request(f"http://{ip}:{port}{path}")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read().decode()
    return json.loads(body) if path.startswith("/v1") else body


def test_load_raises_replicas_to_the_bound_and_idle_brings_them_down_to_zero(
    release: Release,
) -> None:
    # At zero to begin with: the load's first requests wake it, the rest raise it.
    release.apply_model("busy", replicas=0, autoscaling=autoscaling(0, 3, 1, 8), **SLOW)
    pod = start_load(release, "busy", concurrency=6, seconds=60)
    seen: set[int] = set()

    def at_the_bound() -> bool:
        seen.add(replicas(release, "busy"))
        return replicas(release, "busy") == 3 and ready_pods(release, "busy") == 3

    wait_for("3 replicas ready under load", at_the_bound, timeout_s=180)
    result = load_result(release, pod)
    assert result["failures"] == {} and result["answered"] > 0, result
    assert max(seen) == 3, seen  # never past maxReplicas
    assert events(release, "busy", "ScaledUp")

    wait_for("scaled to zero once idle", lambda: at_zero(release, "busy"), timeout_s=180)
    model = release.model("busy")
    assert model["status"]["phase"] == "ScaledToZero"
    assert model["status"]["autoscaling"]["desiredReplicas"] == 0
    assert "gateway" in json.dumps(model["status"]["conditions"])
    assert events(release, "busy", "ScaledToZero")


def test_a_request_at_zero_is_held_until_the_model_starts_and_gets_a_real_image(
    release: Release, tmp_path: Path
) -> None:
    release.apply_model("sleepy", replicas=0, autoscaling=autoscaling(0, 1, 2, 600), **SMALL)
    wait_for("no pod", lambda: at_zero(release, "sleepy"))
    image = run_client(release, gateway_url(release), "sleepy", tmp_path, api_key=TOKEN)
    with Image.open(image) as png:
        assert png.size == (64, 64)
        assert png.convert("RGB").getpixel((5, 5)) == STUB_COLOR
    assert replicas(release, "sleepy") == 1
    assert len(release.pods("sleepy")) == 1


def test_a_burst_at_zero_wakes_the_model_once(release: Release) -> None:
    release.apply_model("burst", replicas=0, autoscaling=autoscaling(0, 3, 100, 600), **SMALL)
    wait_for("no pod", lambda: at_zero(release, "burst"))
    burst = {str(n): {"model": "burst", "token": TOKEN} for n in range(12)}
    answers = at_once(release, "burst", burst)
    assert [answer["status"] for answer in answers.values()] == [200] * 12, answers
    metrics = gateway_get(release, "/metrics")
    [cold] = [
        line
        for line in metrics.splitlines()
        if line.startswith("tti_gateway_cold_starts_total") and 'model="burst"' in line
    ]
    assert float(cold.split()[-1]) == 1.0, cold
    assert replicas(release, "burst") == 1  # woken to one replica, not once per request


def test_steady_load_does_not_flap(release: Release) -> None:
    release.apply_model("steady", autoscaling=autoscaling(1, 4, 2, 30), **SLOW)
    wait_ready(release, "steady")
    # Three clients always in flight against a target of two per replica: two replicas.
    pod = start_load(release, "steady", concurrency=3, seconds=75)
    wait_for("2 replicas ready", lambda: ready_pods(release, "steady") == 2, timeout_s=120)
    counts = []
    for _ in range(20):
        counts.append(replicas(release, "steady"))
        time.sleep(1)
    assert counts == [2] * 20, counts
    assert load_result(release, pod)["failures"] == {}


def test_the_gateway_answers_bad_requests_in_its_envelope(release: Release) -> None:
    release.apply_model("sleepless", **SMALL)
    release.apply_model(
        "never",
        image="tti-server:does-not-exist",
        replicas=0,
        autoscaling=autoscaling(0, 1, 2, 600),
        **SMALL,
    )
    wait_ready(release, "sleepless")
    requests = {
        "unknown": {"model": "no-such-model", "token": TOKEN},
        "no token": {"model": "sleepless"},
        "bad token": {"model": "sleepless", "token": "wrong"},
        "too large": {"model": "sleepless", "token": TOKEN, "prompt_bytes": 2 << 20},
        "never starts": {"model": "never", "token": TOKEN},
    }
    answers = at_once(release, "errors", requests, HOLD_S + 120)
    unknown = answers["unknown"]
    assert unknown["status"] == 404 and "sleepless" in unknown["details"], unknown  # lists them
    assert answers["no token"]["status"] == 401 and answers["bad token"]["status"] == 401
    assert answers["too large"]["status"] == 413
    never = answers["never starts"]
    assert never["status"] == 503 and "never" in never["details"], answers
    assert int(never["retry_after"]) > 0, never
    assert replicas(release, "never") == 1  # it was woken; its image just does not exist


def test_the_gateway_restarted_loses_no_model_state(release: Release) -> None:
    release.apply_model("kept", **SMALL)
    release.apply_model("kept-cold", replicas=0, autoscaling=autoscaling(0, 1, 2, 600), **SMALL)
    wait_ready(release, "kept")
    wait_for("kept-cold at zero", lambda: at_zero(release, "kept-cold"))

    def states() -> dict[str, str]:
        listed = gateway_get(release, "/v1/models")["data"]
        return {m["id"]: m["state"] for m in listed if m["id"] in ("kept", "kept-cold")}

    wait_for("the gateway to see both", lambda: len(states()) == 2)
    before = states()
    assert before == {"kept": "Ready", "kept-cold": "ScaledToZero"}
    old = gateway_pod(release)["metadata"]["name"]
    release.kubectl("delete", "pod", old, "-n", release.namespace, "--wait=false")

    def restarted() -> bool:
        try:
            pod = gateway_pod(release)
        except (AssertionError, KeyError, ValueError):
            return False
        return pod["metadata"]["name"] != old and _ready(pod)

    wait_for("a new gateway pod, Ready", restarted)
    assert states() == before


def _ready(pod: Any) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def test_a_model_without_autoscaling_is_never_touched(release: Release) -> None:
    release.apply_model("fixed", **SLOW)
    wait_ready(release, "fixed")
    pod = start_load(release, "fixed", concurrency=6, seconds=20)
    counts = []
    while release.get("pod", pod, "-n", release.models)["status"].get("phase") == "Running":
        counts.append(replicas(release, "fixed"))
        time.sleep(1)
    assert load_result(release, pod)["answered"] > 0
    assert set(counts) <= {1}, counts
    assert "autoscaling" not in release.model("fixed").get("status", {})
    for reason in ("ScaledUp", "ScaledDown", "ScaledToZero"):
        assert not events(release, "fixed", reason)
