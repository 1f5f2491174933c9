"""Dynamic PersistentVolumes on the real node, by Rancher's local-path-provisioner (a process
beside the kubelet), as the operator's model cache uses them: a claim of the default class is
bound where its first pod runs, a second pod reads it read-only and cannot write, deleting the
claim removes its directory (through the provisioner's helper pod). The shared class binds at
once and serves a pod on one of kwok's GPU nodes too. Pods reach a process on this machine at
the cluster's host address (where the tests' Hugging Face endpoint serves them).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from support.cluster import Cluster
from support.hf_endpoint import HubEndpoint

from localcluster import launcher

pytestmark = pytest.mark.cluster

node_config = launcher.node_config
# The Debian base the project's images are built on (the helper pods' image): sh and python3.
IMAGE = launcher.images.BASE_IMAGE
# The model pods' user (Dockerfile.server): the volume must be writable by other users than root.
USER = 10001


def claim(name: str, *, storage_class: str | None = None, access: str = "ReadWriteOnce") -> Any:
    spec: dict[str, Any] = {
        "accessModes": [access],
        "resources": {"requests": {"storage": "64Mi"}},
    }
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": name},
        "spec": spec,
    }


def pod(
    name: str, script: str, claim_name: str | None = None, *, read_only: bool = False
) -> dict[str, Any]:
    """A pod of the base image running `script` with sh, with the claim at /cache if given."""
    container: dict[str, Any] = {
        "name": "main",
        "image": IMAGE,
        "imagePullPolicy": "Never",
        "command": ["sh", "-c", script],
    }
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "securityContext": {"runAsUser": USER, "runAsGroup": USER},
        "containers": [container],
    }
    if claim_name is not None:
        container["volumeMounts"] = [
            {"name": "cache", "mountPath": "/cache", "readOnly": read_only}
        ]
        spec["volumes"] = [
            {
                "name": "cache",
                "persistentVolumeClaim": {"claimName": claim_name, "readOnly": read_only},
            }
        ]
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def on_a_gpu_node(manifest: dict[str, Any]) -> dict[str, Any]:
    """The pod asking for a GPU, as a model pod does: only kwok's GPU nodes have one."""
    spec = manifest["spec"]
    spec["containers"][0]["resources"] = {"limits": {"nvidia.com/gpu": "1"}}
    spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    return manifest


def apply(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    listed = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(listed))


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def finished(cluster: Cluster, namespace: str, name: str) -> tuple[str, str]:
    """The pod's final phase and its log."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        phase = get_json(cluster, "pod", name, "-n", namespace)["status"].get("phase")
        if phase in ("Succeeded", "Failed"):
            return phase, cluster.kubectl("logs", name, "-n", namespace).stdout
        time.sleep(1)
    described = cluster.kubectl("describe", "pod", name, "-n", namespace).stdout
    raise AssertionError(f"pod {name} did not finish:\n{described}")


def wait_until(cluster: Cluster, namespace: str, condition: str, target: str) -> None:
    cluster.kubectl("wait", "-n", namespace, f"--for={condition}", target, "--timeout=180s")


def bound_volume(cluster: Cluster, namespace: str, claim_name: str) -> dict[str, Any]:
    wait_until(cluster, namespace, "jsonpath={.status.phase}=Bound", f"pvc/{claim_name}")
    volume = get_json(cluster, "pvc", claim_name, "-n", namespace)["spec"]["volumeName"]
    found: dict[str, Any] = get_json(cluster, "pv", volume)
    return found


def written(cluster: Cluster, namespace: str, claim_name: str, content: str) -> dict[str, Any]:
    """A claim of the default class with a file that a pod (not root) wrote; its volume."""
    apply(cluster, namespace, claim(claim_name))
    apply(cluster, namespace, pod("writer", f"echo {content} > /cache/weights", claim_name))
    phase, log = finished(cluster, namespace, "writer")
    assert phase == "Succeeded", log
    return bound_volume(cluster, namespace, claim_name)


def waits_for_its_first_consumer(cluster: Cluster, namespace: str, claim_name: str) -> bool:
    events = cluster.kubectl(
        "get",
        "events",
        "-n",
        namespace,
        "--field-selector",
        f"involvedObject.name={claim_name},reason=WaitForFirstConsumer",
        "-o",
        "name",
    )
    return bool(events.stdout.strip())


def test_a_claim_of_the_default_class_binds_where_its_first_pod_runs(
    cluster: Cluster, real_namespace: str
) -> None:
    apply(cluster, real_namespace, claim("cache"))
    admitted = get_json(cluster, "pvc", "cache", "-n", real_namespace)
    assert admitted["spec"]["storageClassName"] == node_config.STORAGE_CLASS
    deadline = time.monotonic() + 60
    while not waits_for_its_first_consumer(cluster, real_namespace, "cache"):
        assert time.monotonic() < deadline, "the claim was not held for its first pod"
        time.sleep(1)
    assert get_json(cluster, "pvc", "cache", "-n", real_namespace)["status"]["phase"] == "Pending"

    apply(cluster, real_namespace, pod("writer", "echo cached > /cache/weights", "cache"))
    phase, log = finished(cluster, real_namespace, "writer")
    assert phase == "Succeeded", log

    volume = bound_volume(cluster, real_namespace, "cache")
    spec = volume["spec"]
    [term] = spec["nodeAffinity"]["required"]["nodeSelectorTerms"]
    assert term["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": [node_config.NODE_NAME]}
    ]
    assert spec["persistentVolumeReclaimPolicy"] == "Delete"
    directory = Path(spec["hostPath"]["path"])
    assert directory.parent == cluster.paths.node.node_volumes
    assert (directory / "weights").read_text() == "cached\n"


def test_a_second_pod_reads_the_volume_read_only(cluster: Cluster, real_namespace: str) -> None:
    volume = written(cluster, real_namespace, "cache", "cached")
    script = (
        "cat /cache/weights; "
        # The subshell: a failed redirection is reported on the stderr it was given.
        "if (echo changed > /cache/weights) 2>/tmp/error; then echo wrote; "
        "else cat /tmp/error; fi"
    )

    apply(cluster, real_namespace, pod("reader", script, "cache", read_only=True))
    phase, log = finished(cluster, real_namespace, "reader")

    assert phase == "Succeeded", log
    first, refused = log.splitlines()
    assert first == "cached"
    assert "Read-only file system" in refused
    assert (Path(volume["spec"]["hostPath"]["path"]) / "weights").read_text() == "cached\n"


def test_deleting_the_claim_removes_its_directory(cluster: Cluster, real_namespace: str) -> None:
    volume = written(cluster, real_namespace, "cache", "cached")
    directory = Path(volume["spec"]["hostPath"]["path"])
    assert directory.is_dir()

    cluster.kubectl("delete", "pod", "writer", "-n", real_namespace)
    cluster.kubectl("delete", "pvc", "cache", "-n", real_namespace)
    # The provisioner deletes the volume once its helper pod has removed the directory.
    cluster.kubectl("wait", "--for=delete", f"pv/{volume['metadata']['name']}", "--timeout=180s")

    assert not directory.exists()
    assert directory.parent.is_dir()


def test_the_shared_class_binds_at_once_and_serves_pods_on_any_node(
    cluster: Cluster, real_namespace: str
) -> None:
    shared = claim("shared", storage_class=node_config.SHARED_STORAGE_CLASS, access="ReadWriteMany")

    apply(cluster, real_namespace, shared)
    volume = bound_volume(cluster, real_namespace, "shared")
    assert "nodeAffinity" not in volume["spec"]
    assert Path(volume["spec"]["hostPath"]["path"]).parent == cluster.paths.node.shared_volumes

    gpu_pod = on_a_gpu_node(pod("on-gpu-node", "sleep 3600", "shared", read_only=True))
    apply(cluster, real_namespace, gpu_pod, pod("writer", "echo shared > /cache/weights", "shared"))
    phase, log = finished(cluster, real_namespace, "writer")
    assert phase == "Succeeded", log
    assert (Path(volume["spec"]["hostPath"]["path"]) / "weights").read_text() == "shared\n"
    wait_until(cluster, real_namespace, "condition=Ready", "pod/on-gpu-node")
    node = get_json(cluster, "pod", "on-gpu-node", "-n", real_namespace)["spec"]["nodeName"]
    assert node.startswith(launcher.NODE_PREFIX)


def test_a_pod_reaches_a_process_on_this_machine_at_the_host_address(
    cluster: Cluster, real_namespace: str, tmp_path: Path
) -> None:
    """The tests' hub endpoint on the host address: a pod fetches a weights file through the
    hub's redirect to its CDN port, as huggingface_hub does."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "model.safetensors").write_bytes(b"\x01" * 1000)
    hub = HubEndpoint(host=cluster.host_address)
    hub.add_repo("tti-test/probe", repo)
    with hub:
        url = f"{hub.url}/tti-test/probe/resolve/main/model.safetensors"
        script = f"import urllib.request; print(len(urllib.request.urlopen({url!r}).read()))"
        apply(cluster, real_namespace, pod("fetch", f"python3 -c {json.dumps(script)}"))
        phase, log = finished(cluster, real_namespace, "fetch")

        assert phase == "Succeeded", log
        assert log.strip() == "1000"
        assert hub.bytes_sent("tti-test/probe") == {"model.safetensors": 1000}
