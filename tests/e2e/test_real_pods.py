"""The chart, the operator and the models on the real node: real images, kubelet and probes.

One release of the chart serves the module: its operator runs as the chart's Deployment, in a
pod, with its ServiceAccount, and watches one namespace where each test applies its models.
Every model pod here runs the `tti-server` image for real (no GPU is asked for: the real node
has none); Ready comes from its readiness probe, failures from the kubelet.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support.cluster import Cluster, fresh_namespace
from support.helm import CHART

from localcluster import demo

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

STUB_RGB = (0, 100, 200)
TIMEOUT_S = 240.0


@dataclass(frozen=True)
class Release:
    cluster: Cluster
    name: str
    namespace: str  # the operator's own
    models: str  # the namespace it watches

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        return self.cluster.kubectl(*args, input=input, check=check).stdout

    def get(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json"))

    def apply_model(self, name: str, **spec: Any) -> None:
        model = {
            "apiVersion": "tti.dev/v1alpha1",
            "kind": "TextToImageModel",
            "metadata": {"name": name, "namespace": self.models},
            "spec": {"model": "stub", "gpus": 0, **spec},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(model))

    def model(self, name: str) -> Any:
        return self.get("ttimodel", name, "-n", self.models)

    def pods(self, name: str) -> list[Any]:
        selector = f"tti.dev/model={name}"
        items: list[Any] = self.get("pods", "-n", self.models, "-l", selector)["items"]
        return [pod for pod in items if not pod["metadata"].get("deletionTimestamp")]


def ready_condition(resource: Any) -> dict[str, Any]:
    conditions = resource.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == "Ready"), {})


def wait_for(what: str, probe: Callable[[], Any], timeout_s: float = TIMEOUT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(1)


def wait_ready(release: Release, name: str) -> Any:
    def ready() -> Any:
        resource = release.model(name)
        return resource if ready_condition(resource).get("status") == "True" else None

    return wait_for(f"ttimodel/{name} Ready", ready)


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    operator_ns = next(fresh_namespace(cluster, "rp-op", simulated=False))
    models_ns = next(fresh_namespace(cluster, "rp-models", simulated=False))
    name = f"rp{uuid.uuid4().hex[:5]}"
    cluster.helm(
        "install", name, str(CHART), "-n", operator_ns,
        "--set", f"watchNamespaces={{{models_ns}}}",
        "--set", f"tests.model=helm-tested,tests.namespace={models_ns}",
        "--wait", "--timeout", "4m",
    )  # fmt: skip
    yield Release(cluster, name, operator_ns, models_ns)
    cluster.helm("uninstall", name, "-n", operator_ns, "--wait", check=False)
    for namespace in (models_ns, operator_ns):
        cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def exec_in(release: Release, namespace: str, pod: str, command: str) -> Any:
    return release.cluster.kubectl(
        "exec", pod, "-n", namespace, "--", "sh", "-c", command, check=False
    )


def test_the_charts_operator_runs_in_a_pod_and_reconciles_a_model(release: Release) -> None:
    [operator] = release.get(
        "pods", "-n", release.namespace, "-l", "app.kubernetes.io/component=operator"
    )["items"]
    assert operator["spec"]["nodeName"] == demo.launcher.node.NODE_NAME
    assert operator["status"]["phase"] == "Running"
    assert operator["spec"]["serviceAccountName"].startswith(release.name)
    # The operator's image runs as uid 10001 on a read-only root filesystem too.
    name = operator["metadata"]["name"]
    assert exec_in(release, release.namespace, name, "id -u").stdout.strip() == "10001"
    written = exec_in(release, release.namespace, name, "touch /opt/venv/x")
    assert written.returncode != 0 and "Read-only file system" in written.stderr

    release.apply_model("reconciled")
    resource = wait_ready(release, "reconciled")
    assert resource["status"]["ready"] == "1/1"
    [pod] = release.pods("reconciled")
    [container] = pod["status"]["containerStatuses"]
    assert container["ready"] and container["started"]
    assert container["image"].endswith("tti-server:0.1.0")


def test_a_client_pod_gets_the_stub_image_through_dns_and_the_service(
    release: Release, tmp_path: Path
) -> None:
    release.apply_model("called")
    wait_ready(release, "called")
    image = run_client(release, "called", tmp_path)
    with Image.open(image) as png:
        assert png.size == (64, 64)
        assert png.convert("RGB").getpixel((5, 5)) == STUB_RGB


def run_client(release: Release, model: str, tmp_path: Path) -> Path:
    url = f"http://{model}.{release.models}.svc:8080"
    pod = demo.client_pod(release.models, url, model, 64, "a lighthouse")
    pod["metadata"]["name"] = f"client-{uuid.uuid4().hex[:6]}"
    release.kubectl("apply", "-f", "-", input=json.dumps(pod))
    name = pod["metadata"]["name"]

    def finished() -> str:
        phase = release.get("pod", name, "-n", release.models)["status"].get("phase", "")
        return phase if phase in ("Succeeded", "Failed") else ""

    phase = wait_for(f"client pod {name}", finished)
    logs = release.kubectl("logs", name, "-n", release.models)
    assert phase == "Succeeded", logs
    path = tmp_path / f"{model}.png"
    path.write_bytes(base64.b64decode(logs.strip().splitlines()[-1]))
    return path


def images_generated(pod: Any) -> float:
    url = f"http://{pod['status']['podIP']}:8080/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("tti_images_generated_total")
    )


def test_scaled_to_two_replicas_requests_from_a_pod_reach_both(release: Release) -> None:
    release.apply_model("scaled")
    wait_ready(release, "scaled")
    release.kubectl("scale", "ttimodel/scaled", "-n", release.models, "--replicas", "2")
    wait_for("2/2 ready", lambda: release.model("scaled").get("status", {}).get("ready") == "2/2")
    pods = release.pods("scaled")
    before = {p["metadata"]["name"]: images_generated(p) for p in pods}

    # New connections each time, so kube-proxy's random choice spreads them.
    script = (
        "import json, urllib.request\n"
        "for i in range(24):\n"
        f"    body = json.dumps({{'model_id': 'scaled', 'inputs': 'x',"
        " 'parameters': {'height': 8, 'width': 8}}).encode()\n"
        f"    request = urllib.request.Request('http://scaled.{release.models}.svc:8080"
        "/api/v1/task/text-to-image', body, {'Content-Type': 'application/json'})\n"
        "    urllib.request.urlopen(request, timeout=30).read()\n"
    )
    pod = demo.client_pod(release.models, "", "scaled", 8, "x")
    pod["metadata"]["name"] = "spread"
    pod["spec"]["containers"][0]["command"] = ["python3", "-c", script]
    release.kubectl("apply", "-f", "-", input=json.dumps(pod))
    wait_for(
        "the spreading client",
        lambda: (
            release.get("pod", "spread", "-n", release.models)["status"].get("phase") == "Succeeded"
        ),
    )
    after = {p["metadata"]["name"]: images_generated(p) for p in release.pods("scaled")}
    served = {name: after[name] - before[name] for name in before}
    assert sum(served.values()) == 24, served
    assert all(count > 0 for count in served.values()), served


def test_a_pod_killed_by_hand_is_replaced_and_the_model_is_ready_again(release: Release) -> None:
    release.apply_model("killed")
    wait_ready(release, "killed")
    [first] = release.pods("killed")
    release.kubectl("delete", "pod", first["metadata"]["name"], "-n", release.models)

    def replaced_and_ready() -> bool:
        pods = release.pods("killed")
        fresh = [p for p in pods if p["metadata"]["uid"] != first["metadata"]["uid"]]
        return bool(fresh) and ready_condition(release.model("killed")).get("status") == "True"

    wait_for("a new pod, Ready", replaced_and_ready)


def test_an_image_that_does_not_exist_shows_image_pull_back_off(release: Release) -> None:
    release.apply_model("no-image", image="tti-server:does-not-exist")
    condition = wait_for(
        "ImagePullBackOff",
        lambda: (
            (c := ready_condition(release.model("no-image"))).get("reason") == "ImagePullBackOff"
            and c
        ),
    )
    assert condition["status"] == "False"
    assert "does-not-exist" in condition["message"]


def test_missing_weights_show_crash_loop_back_off(release: Release, tmp_path: Path) -> None:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    release.apply_model(
        "no-weights",
        model="sdxl-turbo",
        source={"hostPath": {"path": str(empty)}},
        resources={"requests": {"cpu": "100m", "memory": "512Mi"}},
    )
    condition = wait_for(
        "CrashLoopBackOff",
        lambda: (
            (c := ready_condition(release.model("no-weights"))).get("reason") == "CrashLoopBackOff"
            and c
        ),
        timeout_s=300,
    )
    assert condition["status"] == "False"


def test_helm_test_runs_its_pod_and_passes(release: Release) -> None:
    release.apply_model("helm-tested")
    wait_ready(release, "helm-tested")
    result = release.cluster.helm("test", release.name, "-n", release.namespace, "--timeout", "3m")
    assert "Phase:          Succeeded" in result.stdout, result.stdout


def test_the_security_context_is_enforced_in_the_container(release: Release) -> None:
    release.apply_model("locked")
    wait_ready(release, "locked")
    [pod] = release.pods("locked")

    def in_pod(command: str) -> Any:
        return exec_in(release, release.models, pod["metadata"]["name"], command)

    assert in_pod("id -u").stdout.strip() == "10001"
    outside = in_pod("touch /opt/venv/x")
    assert outside.returncode != 0 and "Read-only file system" in outside.stderr
    assert in_pod("touch /cache/x /tmp/x").returncode == 0


def test_deleting_the_resource_removes_its_pods(release: Release) -> None:
    release.apply_model("deleted")
    wait_ready(release, "deleted")
    assert release.pods("deleted")
    release.kubectl("delete", "ttimodel", "deleted", "-n", release.models)
    wait_for("the pods gone", lambda: not release.pods("deleted"))
