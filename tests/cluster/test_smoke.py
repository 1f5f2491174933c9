"""Smoke tests of the local cluster: the behaviours the operator and the chart rely on.

Scheduling, validation and garbage collection here are done by the real kube-scheduler,
kube-apiserver and kube-controller-manager; only the nodes (and so the containers) are simulated.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from support.cluster import Cluster, CommandError

pytestmark = pytest.mark.cluster

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def gpu_deployment(
    name: str, *, gpus: int, replicas: int = 1, tolerate: bool = True
) -> dict[str, Any]:
    pod_spec: dict[str, Any] = {
        "containers": [
            {
                "name": "server",
                "image": "registry.invalid/tti-server:never-pulled",
                "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
            }
        ]
    }
    if tolerate:
        pod_spec["tolerations"] = [GPU_TOLERATION]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}}, "spec": pod_spec},
        },
    }


def apply(cluster: Cluster, namespace: str, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(manifest))


def pods(cluster: Cluster, namespace: str, app: str) -> list[dict[str, Any]]:
    listed = cluster.kubectl("get", "pods", "-n", namespace, "-l", f"app={app}", "-o", "json")
    items: list[dict[str, Any]] = json.loads(listed.stdout)["items"]
    return items


def wait_unschedulable(cluster: Cluster, namespace: str, app: str) -> str:
    """Wait until the scheduler gave up on the app's pods; return its message."""
    cluster.kubectl(
        "wait",
        "-n",
        namespace,
        "pod",
        "-l",
        f"app={app}",
        "--for=jsonpath={.status.conditions[?(@.type=='PodScheduled')].reason}=Unschedulable",
        "--timeout=60s",
    )
    (pod,) = pods(cluster, namespace, app)
    (condition,) = [c for c in pod["status"]["conditions"] if c["type"] == "PodScheduled"]
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]
    message: str = condition["message"]
    return message


def test_gpu_pods_run_on_gpu_nodes(cluster: Cluster, kube_namespace: str) -> None:
    apply(cluster, kube_namespace, gpu_deployment("one-gpu", gpus=1, replicas=2))
    cluster.kubectl(
        "rollout", "status", "-n", kube_namespace, "deployment/one-gpu", "--timeout=60s"
    )

    running = pods(cluster, kube_namespace, "one-gpu")
    assert len(running) == 2
    for pod in running:
        assert pod["status"]["phase"] == "Running"
        node = json.loads(
            cluster.kubectl("get", "node", pod["spec"]["nodeName"], "-o", "json").stdout
        )
        assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
        assert {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"} in node[
            "spec"
        ]["taints"]


def test_gpu_pod_without_toleration_is_kept_off_gpu_nodes(
    cluster: Cluster, kube_namespace: str
) -> None:
    apply(cluster, kube_namespace, gpu_deployment("untolerated", gpus=1, tolerate=False))

    message = wait_unschedulable(cluster, kube_namespace, "untolerated")

    assert "untolerated taint" in message
    assert "nvidia.com/gpu" in message


def test_more_gpus_than_any_node_has_stays_pending(cluster: Cluster, kube_namespace: str) -> None:
    apply(cluster, kube_namespace, gpu_deployment("nine-gpus", gpus=9))

    message = wait_unschedulable(cluster, kube_namespace, "nine-gpus")

    assert "Insufficient nvidia.com/gpu" in message


def widget_crd(group: str) -> dict[str, Any]:
    spec_schema = {
        "type": "object",
        "required": ["replicas", "size"],
        "properties": {
            "replicas": {"type": "integer", "minimum": 1},
            "size": {"type": "string", "enum": ["small", "large"]},
        },
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {"spec": spec_schema},
                        }
                    },
                }
            ],
        },
    }


@pytest.fixture
def widget_group(cluster: Cluster, kube_namespace: str) -> Any:
    # CRDs are cluster-wide: a group per test keeps sessions sharing the cluster apart.
    group = f"{kube_namespace}.smoke.tti.dev"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(widget_crd(group)))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/widgets.{group}", "--timeout=60s")
    yield group
    cluster.kubectl("delete", f"crd/widgets.{group}", "--wait=false")


def widget(group: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {"apiVersion": f"{group}/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec}
    )


def test_crd_schema_rejects_invalid_object_at_apply(
    cluster: Cluster, kube_namespace: str, widget_group: str
) -> None:
    invalid = widget(widget_group, {"replicas": 0, "size": "huge"})

    with pytest.raises(CommandError) as rejected:
        cluster.kubectl("apply", "-n", kube_namespace, "-f", "-", input=invalid)

    stderr = rejected.value.stderr
    assert "is invalid" in stderr
    assert "spec.replicas" in stderr and "should be greater than or equal to 1" in stderr
    assert "spec.size" in stderr and 'supported values: "small", "large"' in stderr
    missing = cluster.kubectl(
        "get", "-n", kube_namespace, f"widgets.{widget_group}", "w", check=False
    )
    assert missing.returncode != 0

    valid = widget(widget_group, {"replicas": 2, "size": "small"})
    cluster.kubectl("apply", "-n", kube_namespace, "-f", "-", input=valid)


def test_owner_reference_garbage_collection(cluster: Cluster, kube_namespace: str) -> None:
    cluster.kubectl("create", "configmap", "owner", "-n", kube_namespace)
    owner_uid = cluster.kubectl(
        "get", "configmap", "owner", "-n", kube_namespace, "-o", "jsonpath={.metadata.uid}"
    ).stdout
    child = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "child",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner_uid}
            ],
        },
    }
    apply(cluster, kube_namespace, child)
    cluster.kubectl("create", "configmap", "bystander", "-n", kube_namespace)

    cluster.kubectl("delete", "configmap", "owner", "-n", kube_namespace)
    cluster.kubectl(
        "wait", "--for=delete", "configmap/child", "-n", kube_namespace, "--timeout=60s"
    )

    gone = cluster.kubectl("get", "configmap", "child", "-n", kube_namespace, check=False)
    assert "NotFound" in gone.stderr
    cluster.kubectl("get", "configmap", "bystander", "-n", kube_namespace)
