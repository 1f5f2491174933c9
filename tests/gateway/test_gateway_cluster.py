"""The gateway's cluster source against a real API server (kwok's control plane, no real node).

What is real: the API server (the CRD's schema, the scale subresource, EndpointSlice
validation, RBAC), the gateway process under exactly the chart's gateway Role, real
stub `tti-server` processes, the official `openai` client. What stands in for a real
Deployment: nothing runs the models here (no operator), so each test writes the
EndpointSlices the EndpointSlice controller would write, pointing at the stub servers on
this host's non-loopback address (the API server refuses loopback endpoints), behind a
selector-less Service.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
import yaml
from support.clients import sample
from support.cluster import Cluster, fresh_namespace
from support.gateway import StartGateway
from support.helm import Helm, ensure_helm
from support.server import ServerProcess, StartServer

from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE as CAIKIT
from tti_gateway.cluster import Client, ClusterSource
from tti_gateway.endpoints import EndpointTable, HoldPolicy, Model
from tti_kube.client import ApiError

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "tti.dev_texttoimagemodels.yaml"
T = TypeVar("T")


def host_address() -> str:
    """This host's address on its default route: reachable, and not loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the route
        address: str = sock.getsockname()[0]
        return address


def crd_with_autoscaling() -> dict[str, Any]:
    """crds/'s CRD, plus an open `spec.autoscaling` where it has none yet: the autoscaler's
    schema (issue 13) is not the gateway's to write; it only reads whether the block is set."""
    crd: dict[str, Any] = yaml.safe_load(CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"].setdefault(
        "autoscaling", {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    )
    return crd


@pytest.fixture(scope="module")
def crd(cluster: Cluster) -> None:
    document = json.dumps(crd_with_autoscaling())
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=document)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/texttoimagemodels.tti.dev", "--timeout=60s"
    )


class Namespace:
    """kubectl in one namespace: models, Services and EndpointSlices as JSON."""

    def __init__(self, cluster: Cluster, name: str) -> None:
        self.cluster, self.name = cluster, name

    def kubectl(self, *args: str, input: str | None = None) -> str:
        return self.cluster.kubectl("-n", self.name, *args, input=input).stdout

    def apply(self, obj: dict[str, Any]) -> None:
        self.kubectl("apply", "-f", "-", input=json.dumps(obj))

    def model(self, name: str, replicas: int = 1, autoscaling: bool = False) -> None:
        spec: dict[str, Any] = {"model": "stub", "gpus": 0, "replicas": replicas}
        if autoscaling:
            spec["autoscaling"] = {"minReplicas": 0, "maxReplicas": 2}
        self.apply(
            {
                "apiVersion": "tti.dev/v1alpha1",
                "kind": "TextToImageModel",
                "metadata": {"name": name},
                "spec": spec,
            }
        )
        # The model's Service as the operator makes it, but without a selector: the
        # test writes its endpoints.
        self.apply(
            {
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": {"name": name},
                "spec": {"ports": [{"name": "http", "port": 8080, "targetPort": 8080}]},
            }
        )

    def endpoints(self, model: str, servers: list[ServerProcess], ready: bool = True) -> None:
        """The model's EndpointSlice: each server at this host's address, on its port."""
        address = host_address()
        ports = {int(s.url.rsplit(":", 1)[1]) for s in servers}
        assert len(ports) <= 1, "one slice has one port: start the servers on the same one"
        self.apply(
            {
                "apiVersion": "discovery.k8s.io/v1",
                "kind": "EndpointSlice",
                "metadata": {
                    "name": f"{model}-test",
                    "labels": {
                        "kubernetes.io/service-name": model,
                        "endpointslice.kubernetes.io/managed-by": "tests.tti.dev",
                    },
                },
                "addressType": "IPv4",
                "ports": [{"name": "http", "port": port, "protocol": "TCP"} for port in ports],
                "endpoints": [{"addresses": [address], "conditions": {"ready": ready}}]
                if servers
                else [],
            }
        )

    def replicas(self, model: str) -> int:
        got = json.loads(self.kubectl("get", "ttimodel", model, "-o", "json"))
        return int(got["spec"]["replicas"])


@pytest.fixture
def namespaces(cluster: Cluster, crd: None) -> Iterator[list[Namespace]]:
    """Two fresh namespaces (a name may be in both)."""
    first = fresh_namespace(cluster, "gw", simulated=True)
    second = fresh_namespace(cluster, "gw", simulated=True)
    yield [Namespace(cluster, next(first)), Namespace(cluster, next(second))]
    for generator in (first, second):
        next(generator, None)


def gateway_rules() -> list[dict[str, Any]]:
    """The gateway's Role as the chart renders it for one watched namespace."""
    objects = Helm(ensure_helm()).template("watchNamespaces={x}")
    [role] = [
        o
        for o in objects
        if o["kind"] == "Role"
        and o["metadata"]["labels"].get("app.kubernetes.io/component") == "gateway"
    ]
    return role["rules"]  # type: ignore[no-any-return]


def restricted_kubeconfig(cluster: Cluster, namespaces: list[Namespace], path: Path) -> Path:
    """A kubeconfig for a service account bound to the chart's gateway Role, and no more."""
    home = namespaces[0].name
    cluster.kubectl("-n", home, "create", "serviceaccount", "tti-gateway")
    for ns in namespaces:
        role = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "tti-gateway"},
            "rules": gateway_rules(),
        }
        ns.apply(role)
        ns.kubectl(
            "create", "rolebinding", "tti-gateway", "--role=tti-gateway",
            f"--serviceaccount={home}:tti-gateway",
        )  # fmt: skip
    token = cluster.kubectl("-n", home, "create", "token", "tti-gateway", "--duration=1h")
    admin = json.loads(cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "gw", "user": {"token": token.stdout.strip()}}],
        "contexts": [{"name": "gw", "context": {"cluster": "c", "user": "gw"}}],
        "current-context": "gw",
    }
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def cluster_gateway(
    cluster: Cluster, namespaces: list[Namespace], start_gateway: StartGateway, tmp_path: Path
) -> Callable[..., ServerProcess]:
    """Start a gateway on the cluster source, watching both namespaces under the chart's
    Role only (a call the Role lacks would show as a watch that never lists: not ready)."""
    kubeconfig = restricted_kubeconfig(cluster, namespaces, tmp_path / "kubeconfig")

    def start(*args: str) -> ServerProcess:
        return start_gateway(
            "--source", "cluster",
            "--namespaces", ",".join(ns.name for ns in namespaces),
            *args,
            env={"KUBECONFIG": str(kubeconfig)},
        )  # fmt: skip

    return start


def eventually(probe: Callable[[], T], done: Callable[[T], bool], what: str) -> T:
    """Poll until `done(probe())`; the watches deliver within moments, the limit is generous."""
    deadline = 60.0
    step = 0.05
    waited = 0.0
    while True:
        value = probe()
        if done(value):
            return value
        if waited > deadline:
            raise AssertionError(f"{what}: still {value!r}")
        threading.Event().wait(step)
        waited += step


def models(gateway: ServerProcess) -> dict[str, dict[str, Any]]:
    data = httpx.get(gateway.url + "/v1/models").json()["data"]
    return {f"{m['namespace']}/{m['id'].rsplit('/', 1)[-1]}": m for m in data}


def stub(start_server: StartServer, model_id: str, port: int | None = None) -> ServerProcess:
    args = ["--model", "stub", "--model-id", model_id, "--grpc-port", "0", "--host", "0.0.0.0"]
    return start_server(*args, *(["--port", str(port)] if port else []))


def caikit(model: str) -> dict[str, Any]:
    return {"model_id": model, "inputs": "a fox", "parameters": {"height": 64, "width": 64}}


def test_models_and_their_slices_route_and_a_removed_model_disappears(
    namespaces: list[Namespace],
    cluster_gateway: Callable[..., ServerProcess],
    start_server: StartServer,
) -> None:
    ns = namespaces[0]
    server = stub(start_server, "alpha")
    ns.model("alpha")
    ns.endpoints("alpha", [server], ready=False)
    gateway = cluster_gateway()
    # Ready means listed: the model is there at once, not ready since its pod is not.
    listed = models(gateway)[f"{ns.name}/alpha"]
    assert (listed["state"], listed["side_multiple"]) == ("Starting", 1)  # stub: any side
    ns.endpoints("alpha", [server])
    eventually(lambda: models(gateway)[f"{ns.name}/alpha"]["state"], "Ready".__eq__, "state")
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused")
    assert client.images.generate(model="alpha", prompt="a fox", size="64x64").data
    ns.kubectl("delete", "ttimodel", "alpha")
    eventually(lambda: models(gateway), lambda m: not m, "models after the delete")
    answer = httpx.post(gateway.url + CAIKIT, json=caikit("alpha"))
    assert answer.status_code == 404 and "known models: none" in answer.json()["details"]


def test_a_burst_at_zero_scales_the_model_once_and_is_answered_when_it_starts(
    namespaces: list[Namespace],
    cluster_gateway: Callable[..., ServerProcess],
    start_server: StartServer,
) -> None:
    ns = namespaces[0]
    ns.model("cold", replicas=0, autoscaling=True)
    gateway = cluster_gateway("--hold-timeout", "120")
    assert models(gateway)[f"{ns.name}/cold"]["state"] == "ScaledToZero"
    answers: list[int] = []

    def call() -> None:
        answers.append(
            httpx.post(gateway.url + CAIKIT, json=caikit("cold"), timeout=150).status_code
        )

    burst = [threading.Thread(target=call) for _ in range(5)]
    for thread in burst:
        thread.start()
    held = f'tti_gateway_held_requests{{model="cold",namespace="{ns.name}"}}'
    eventually(lambda: sample(gateway.metrics_url, held), (5.0).__eq__, "held requests")
    assert eventually(lambda: ns.replicas("cold"), (1).__eq__, "spec.replicas") == 1
    # What the operator and the EndpointSlice controller would do next: a ready pod.
    ns.endpoints("cold", [stub(start_server, "cold")])
    for thread in burst:
        thread.join()
    assert answers == [200] * 5
    cold_starts = f'tti_gateway_cold_starts_total{{model="cold",namespace="{ns.name}"}}'
    assert sample(gateway.metrics_url, cold_starts) == 1  # one wake, one scale patch, for the burst
    assert sample(gateway.metrics_url, held) == 0


def test_a_model_scaled_to_zero_by_hand_gets_503_at_once_and_stays_at_zero(
    namespaces: list[Namespace], cluster_gateway: Callable[..., ServerProcess]
) -> None:
    ns = namespaces[0]
    ns.model("off", replicas=0)
    gateway = cluster_gateway()
    answer = httpx.post(gateway.url + CAIKIT, json=caikit("off"))
    assert answer.status_code == 503
    assert "spec.replicas: 0" in answer.json()["details"]
    assert ns.replicas("off") == 0


def test_a_name_in_two_namespaces_needs_its_namespace(
    namespaces: list[Namespace],
    cluster_gateway: Callable[..., ServerProcess],
    start_server: StartServer,
) -> None:
    second = namespaces[1]
    servers = [stub(start_server, "twin"), stub(start_server, "twin")]
    for ns, server in zip(namespaces, servers, strict=True):
        ns.model("twin")
        ns.endpoints("twin", [server])
    gateway = cluster_gateway()
    bare = httpx.post(gateway.url + CAIKIT, json=caikit("twin"))
    assert bare.status_code == 400
    both = sorted(f"{ns.name}/twin" for ns in namespaces)
    assert f"({both[0]} and {both[1]})" in bare.json()["details"]
    # The pod knows the bare name: the gateway forwards that (a stub refuses any other).
    named = httpx.post(gateway.url + CAIKIT, json=caikit(f"{second.name}/twin"))
    assert named.status_code == 200, named.text
    served = [sample(s.url, 'tti_requests_total{method="POST"') for s in servers]
    assert served == [0, 1]


def test_a_restarted_gateway_has_the_same_table(
    namespaces: list[Namespace],
    cluster_gateway: Callable[..., ServerProcess],
    start_server: StartServer,
) -> None:
    ns = namespaces[0]
    ns.model("kept")
    ns.endpoints("kept", [stub(start_server, "kept")])
    ns.model("asleep", replicas=0, autoscaling=True)
    first = cluster_gateway()
    before = eventually(
        lambda: models(first), lambda m: m[f"{ns.name}/kept"]["state"] == "Ready", "table"
    )
    first.stop()
    second = cluster_gateway()
    assert models(second) == before  # the first list alone gives it all back
    assert httpx.post(second.url + CAIKIT, json=caikit("kept")).status_code == 200


def test_a_wake_from_a_stale_view_does_not_undo_a_scale_up(
    cluster: Cluster, namespaces: list[Namespace], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two gateway replicas, or the autoscaler first: a gateway that saw the model at zero
    a moment ago must not set it back to one replica."""
    ns = namespaces[0]
    ns.model("raced", replicas=0, autoscaling=True)
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))

    async def wake(version: str) -> None:
        client = Client("tti-gateway")
        await client.login()
        try:
            source = ClusterSource(EndpointTable(HoldPolicy(1, 1, 1)), client, [ns.name])
            await source.wake(Model(ns.name, "raced", replicas=0, version=version))
        finally:
            await client.close()

    seen_at_zero = version_of(ns, "raced")
    ns.kubectl("scale", "ttimodel", "raced", "--replicas=3")  # the autoscaler, first
    with pytest.raises(ApiError) as refused:
        asyncio.run(wake(seen_at_zero))
    assert refused.value.status == 409
    assert ns.replicas("raced") == 3
    ns.kubectl("scale", "ttimodel", "raced", "--replicas=0")
    asyncio.run(wake(version_of(ns, "raced")))
    assert ns.replicas("raced") == 1


def version_of(ns: Namespace, model: str) -> str:
    got = json.loads(ns.kubectl("get", "ttimodel", model, "-o", "json"))
    return str(got["metadata"]["resourceVersion"])
