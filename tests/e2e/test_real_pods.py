"""The chart, the operator and the models on the real node: real images, kubelet and probes.

One release of the chart serves the module: its operator runs as the chart's Deployment, in a
pod, with its ServiceAccount, and watches one namespace where each test applies its models.
Every model pod here runs the `tti-server` image for real (no GPU is asked for: the real node
has none); Ready comes from its readiness probe, failures from the kubelet.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support.cluster import Cluster
from support.realpods import (
    Release,
    exec_in,
    install,
    metric,
    pod_finished,
    ready_condition,
    run_client,
    start_python_pod,
    wait_for,
    wait_ready,
)

from localcluster import demo
from tti_server.backends.stub import STUB_COLOR

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

IMAGES = "tti_images_generated_total"


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    with install(cluster, "rp", "tests.model=helm-tested") as release:
        yield release


def test_the_charts_operator_runs_in_a_pod_and_reconciles_a_model(release: Release) -> None:
    [operator] = release.get(
        "pods", "-n", release.namespace, "-l", "app.kubernetes.io/component=operator"
    )["items"]
    assert operator["spec"]["nodeName"] == demo.node_config.NODE_NAME
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
    image = run_client(release, release.service_url("called"), "called", tmp_path)
    with Image.open(image) as png:
        assert png.size == (64, 64)
        assert png.convert("RGB").getpixel((5, 5)) == STUB_COLOR


def test_scaled_to_two_replicas_requests_from_a_pod_reach_both(release: Release) -> None:
    release.apply_model("scaled")
    wait_ready(release, "scaled")
    release.kubectl("scale", "ttimodel/scaled", "-n", release.models, "--replicas", "2")
    wait_for("2/2 ready", lambda: release.model("scaled").get("status", {}).get("ready") == "2/2")
    pods = release.pods("scaled")
    before = {p["metadata"]["name"]: metric(p, IMAGES) for p in pods}

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
    service = f"scaled.{release.models}.svc:8080"
    pod_finished(release, start_python_pod(release, "spread", script, admitted_by=service))
    after = {p["metadata"]["name"]: metric(p, IMAGES) for p in release.pods("scaled")}
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
