"""The autoscaler against the real test cluster, reading the load of a real tti-server.

The model's pods are kwok's (no container runs), so the operator is told to read every
pod's load from one real `tti-server` process on this host (`TTI_OPERATOR_POD_METRICS_URL`);
the autoscaler scrapes each distinct URL once, so that server's load is the model's. The
operator runs under the chart's Role only, so the scale subresource's RBAC is tested too.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from operator_harness import OperatorProcess
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from support.cluster import Cluster
from support.server import ServerProcess, StartServer, free_port
from test_operator_cluster import Kube, condition, model, restricted_kubeconfig

from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE as CAIKIT

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

HELD = "tti_gateway_held_requests"
#: Small intervals and delays keep the test short; the decisions are the same at any scale.
INTERVAL_S = "0.5"
DELAY_S = 2


@pytest.fixture
def kube(
    cluster: Cluster, crd: Path, cpu_nodes: str, kube_namespace: str, tmp_path: Path
) -> Iterator[Kube]:
    """A fresh namespace served by an operator of its own (not the session's: that one
    would read the kwok pods' unreachable IPs), started by `autoscaled`."""
    scaler = OperatorProcess(cluster, tmp_path / "autoscaler.log")
    yield Kube(cluster, kube_namespace, scaler)
    scaler.stop()


@pytest.fixture
def gateway_metrics() -> Iterator[tuple[str, Gauge]]:
    """The gateway's side of the contract: `tti_gateway_held_requests{namespace,model}` on a
    real Prometheus endpoint (prometheus_client's own HTTP server): its URL and the gauge."""
    registry = CollectorRegistry()
    held = Gauge(
        HELD, "requests waiting for a ready pod", ["namespace", "model"], registry=registry
    )
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    yield f"http://127.0.0.1:{port}", held
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def autoscaled(
    kube: Kube,
    start_server: StartServer,
    gateway_metrics: tuple[str, Gauge],
    tmp_path: Path,
) -> ServerProcess:
    """Start the namespace's operator, under the chart's Role only, its autoscaler reading
    every pod's load from one real server, which is returned, and held requests from
    `gateway_metrics`."""
    server = start_server("--stub-latency-ms", "200", "--max-batch-size", "1", "--max-queue", "64")
    kubeconfig = restricted_kubeconfig(kube, tmp_path / "kubeconfig")
    kube.operator.extra_env = {
        "KUBECONFIG": str(kubeconfig),
        "TTI_OPERATOR_NAMESPACES": kube.namespace,
        "TTI_OPERATOR_AUTOSCALE_INTERVAL_S": INTERVAL_S,
        "TTI_OPERATOR_POD_METRICS_URL": server.url + "/metrics",
        "TTI_OPERATOR_GATEWAY_URL": gateway_metrics[0],
    }
    kube.operator.start()
    return server


class Load:
    """`clients` threads sending requests back to back until stopped."""

    def __init__(self, server: ServerProcess, clients: int) -> None:
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=self._send, args=(server.url,)) for _ in range(clients)
        ]

    def _send(self, url: str) -> None:
        with httpx.Client(base_url=url, timeout=30) as client:
            while not self.stop.is_set():
                client.post(CAIKIT, json={"inputs": "load"}).raise_for_status()

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join()


def replicas(obj: dict[str, Any] | None) -> int | None:
    return None if obj is None else obj["spec"].get("replicas")


def autoscaling(obj: dict[str, Any] | None) -> dict[str, Any]:
    return (obj or {}).get("status", {}).get("autoscaling") or {}


def events(kube: Kube, name: str) -> list[tuple[str, str]]:
    """(reason, message) of the model's Events, oldest first."""
    found = json.loads(
        kube.run("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json")
    )
    items = sorted(found["items"], key=lambda e: e["metadata"]["creationTimestamp"])
    return [(e["reason"], e.get("message", "")) for e in items]


def event_reasons(kube: Kube, name: str) -> list[str]:
    return [reason for reason, _ in events(kube, name)]


def replicas_owners(kube: Kube, name: str) -> set[str]:
    """The field managers that own the model's spec.replicas (its last writers)."""
    obj = json.loads(kube.run("get", "ttimodel", name, "-o", "json", "--show-managed-fields"))
    return {
        f["manager"]
        for f in obj["metadata"]["managedFields"]
        if "f:replicas" in (f.get("fieldsV1") or {}).get("f:spec", {})
    }


def test_replicas_follow_the_load_up_then_down_to_zero_and_a_wake_is_kept(
    kube: Kube, autoscaled: ServerProcess
) -> None:
    policy = {
        "minReplicas": 0,
        "maxReplicas": 3,
        "targetInFlight": 1,
        "scaleDownDelaySeconds": DELAY_S,
    }
    kube.apply(model("busy", model="stub", replicas=1, autoscaling=policy))
    kube.apply(model("fixed", model="stub", replicas=2))  # no autoscaling: never touched
    kube.wait_ready("busy")
    kube.wait_ready("fixed")

    # Four clients keep about four requests in flight: 4 / 1 per replica, bounded by 3.
    with Load(autoscaled, clients=4):
        kube.wait("ttimodel", "busy", lambda m: replicas(m) == 3, "scaled up to the bound")
    assert "ScaledUp" in event_reasons(kube, "busy")
    assert "tti-operator" in replicas_owners(kube, "busy")

    # One client keeps about one request in flight: down to one replica after the delay,
    # and not to zero while that one is busy.
    with Load(autoscaled, clients=1):
        kube.wait("ttimodel", "busy", lambda m: replicas(m) == 1, "scaled down to one")
        assert "ScaledDown" in event_reasons(kube, "busy")
        assert autoscaling(kube.must_get("ttimodel", "busy"))["load"] > 0

    # Idle: after the delay, to zero (min 0), said plainly in the status.
    idle = kube.wait(
        "ttimodel",
        "busy",
        lambda m: (m or {}).get("status", {}).get("phase") == "ScaledToZero",
        "scaled to zero",
    )
    assert replicas(idle) == 0
    ready = condition(idle, "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ScaledToZero")
    assert "the next request through the gateway wakes it" in ready["message"]
    assert condition(idle, "Degraded")["status"] == "False"
    assert autoscaling(idle)["desiredReplicas"] == 0
    assert "lastScaleTime" in autoscaling(idle)
    reasons = event_reasons(kube, "busy")
    assert reasons.index("ScaledToZero") > reasons.index("ScaledUp")
    wide = kube.run("get", "ttimodels", "busy", "-o", "wide")
    assert "ScaledToZero" in wide and "gateway wakes it" in wide

    # The gateway's wake (or a human's `kubectl scale`): a replica count the autoscaler did
    # not set is a fresh scale-up, kept for the delay though nothing is in flight. The
    # autoscaler has decided on it once status.autoscaling wants 1 replica too.
    kube.run(
        "patch",
        "ttimodel",
        "busy",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"autoscaling": {"scaleDownDelaySeconds": 600}}}),
    )
    kube.run("scale", "ttimodel", "busy", "--replicas=1")
    woken = kube.wait(
        "ttimodel", "busy", lambda m: autoscaling(m).get("desiredReplicas") == 1, "the wake kept"
    )
    assert replicas(woken) == 1

    # The model without spec.autoscaling saw the same load URL and was never touched.
    fixed = kube.must_get("ttimodel", "fixed")
    assert replicas(fixed) == 2
    assert "autoscaling" not in fixed["status"]
    assert "tti-operator" not in replicas_owners(kube, "fixed")
    assert not {"ScaledUp", "ScaledDown", "ScaledToZero"} & set(event_reasons(kube, "fixed"))
    assert "forbidden" not in kube.operator.log_tail(400).lower()


def test_requests_held_by_the_gateway_wake_a_model_at_zero_at_once(
    kube: Kube, autoscaled: ServerProcess, gateway_metrics: tuple[str, Gauge]
) -> None:
    """No server has any load (the model has no pod): the held requests alone ask for
    replicas, at once, though the delay is long."""
    _, held = gateway_metrics
    policy = {"minReplicas": 0, "maxReplicas": 4, "targetInFlight": 2, "scaleDownDelaySeconds": 600}
    kube.apply(model("sleepy", model="stub", replicas=0, autoscaling=policy))
    kube.wait(
        "ttimodel", "sleepy", lambda m: autoscaling(m).get("desiredReplicas") == 0, "seen at zero"
    )
    held.labels(namespace="elsewhere", model="sleepy").set(9)  # another namespace's namesake
    held.labels(namespace=kube.namespace, model="sleepy").set(3)
    woken = kube.wait_ready("sleepy")
    assert replicas(woken) == 2  # 3 held / 2 per replica
    said = [m for r, m in events(kube, "sleepy") if r == "ScaledUp"]
    assert said == ["0 -> 2 replicas: 3 requests waiting for a model at zero: woken to 2"]
