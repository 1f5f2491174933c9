"""The real node of the test cluster: a kubelet kwok leaves alone, pods that reach the API
server and each other by name, and a `down` that leaves nothing behind, even after a crash."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from support.cluster import Cluster

from localcluster import launcher

pytestmark = pytest.mark.cluster

# The modules the launcher itself imported (tests/cluster is also on sys.path).
node = launcher.node
node_config = launcher.node_config


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def run_pod(cluster: Cluster, namespace: str, name: str, script: str) -> tuple[str, str]:
    """A pod of the server image running `script` with python3; its phase and log."""
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {
                    "name": "main",
                    "image": launcher.images.PROJECT_IMAGES[0].ref,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", script],
                }
            ],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        phase = get_json(cluster, "pod", name, "-n", namespace)["status"].get("phase")
        if phase in ("Succeeded", "Failed"):
            return phase, cluster.kubectl("logs", name, "-n", namespace).stdout
        time.sleep(1)
    raise AssertionError(f"pod {name} did not finish")


def wait_until(what: str, probe: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.5)


def test_the_real_node_is_a_kubelet_that_kwok_leaves_alone(cluster: Cluster) -> None:
    real = get_json(cluster, "node", node_config.NODE_NAME)
    assert real["status"]["nodeInfo"]["kubeletVersion"].startswith("v1.33.")
    assert real["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://")
    assert "kwok.x-k8s.io/node" not in real["metadata"].get("annotations", {})
    addresses = {a["type"]: a["address"] for a in real["status"]["addresses"]}
    assert addresses["InternalIP"] == node_config.NODE_IP
    # The simulated GPU nodes are still kwok's.
    gpu = get_json(cluster, "node", f"{launcher.NODE_PREFIX}0")
    assert gpu["metadata"]["annotations"]["kwok.x-k8s.io/node"] == "fake"


def test_a_pod_resolves_names_and_reaches_the_api_server(
    cluster: Cluster, real_namespace: str
) -> None:
    script = (
        "import socket, ssl, urllib.request\n"
        "print(socket.gethostbyname('kubernetes.default.svc'))\n"
        "context = ssl.create_default_context(cafile="
        "'/var/run/secrets/kubernetes.io/serviceaccount/ca.crt')\n"
        "token = open('/var/run/secrets/kubernetes.io/serviceaccount/token').read()\n"
        "request = urllib.request.Request('https://kubernetes.default.svc/version',"
        " headers={'Authorization': 'Bearer ' + token})\n"
        "print(urllib.request.urlopen(request, context=context).read().decode())\n"
    )
    phase, log = run_pod(cluster, real_namespace, "dns", script)
    assert phase == "Succeeded", log
    first, *rest = log.splitlines()
    assert first == node_config.SERVICE_IP
    assert json.loads("".join(rest))["gitVersion"].startswith("v1.33.")


def test_a_simulated_namespace_keeps_its_pods_off_the_real_node(
    cluster: Cluster, kube_namespace: str
) -> None:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "simulated", "namespace": kube_namespace},
        "spec": {"containers": [{"name": "c", "image": "not-pulled:1.0.0"}]},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    admitted = get_json(cluster, "pod", "simulated", "-n", kube_namespace)["spec"]
    assert admitted["nodeSelector"] == {"type": "kwok"}
    assert {"key": "kwok.x-k8s.io/node", "operator": "Exists", "effect": "NoSchedule"} in admitted[
        "tolerations"
    ]


def test_down_after_a_crash_leaves_nothing_and_up_brings_the_node_back(
    cluster: Cluster, real_namespace: str
) -> None:
    """containerd, the kubelet, kube-proxy, kube-router and the provisioner killed with pods
    running (one with a volume, one guarded by a NetworkPolicy, so kube-router holds ipsets),
    as a crash or a SIGKILLed `up` leaves them; `down` must still remove everything, the
    volumes and ipsets included, and `up` restore it."""
    paths = cluster.paths.node
    phase, log = run_pod(cluster, real_namespace, "before", "print('ok')")
    assert phase == "Succeeded", log
    scratch = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "scratch", "namespace": real_namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Mi"}}},
    }
    sleeper = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sleeper", "namespace": real_namespace},
        "spec": {
            "containers": [
                {
                    "name": "main",
                    "image": launcher.images.PROJECT_IMAGES[0].ref,
                    "imagePullPolicy": "Never",
                    "command": ["sleep", "3600"],
                    "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}],
                }
            ],
            "volumes": [{"name": "scratch", "persistentVolumeClaim": {"claimName": "scratch"}}],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(scratch))
    cluster.kubectl("apply", "-f", "-", input=json.dumps(sleeper))
    guard = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "guard", "namespace": real_namespace},
        "spec": {
            "podSelector": {},
            "ingress": [{"from": [{"namespaceSelector": {}, "podSelector": {}}]}],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(guard))
    cluster.kubectl(
        "wait", "pod/sleeper", "-n", real_namespace, "--for=condition=Ready", "--timeout=120s"
    )
    assert any(paths.node_volumes.iterdir()), "the claim's directory"
    wait_until("kube-router's sets for the policy", lambda: node.policy_sets() != [])
    for name in ("containerd", "kubelet", "kube-proxy", "kube-router", node.PROVISIONER):
        os.kill(int((paths.pids / f"{name}.pid").read_text()), signal.SIGKILL)
    left = node.leftovers(paths)
    assert left, "a crashed node leaves shims, mounts, the bridge, chains"
    assert any(item.startswith("ipset KUBE-") for item in left), left
    assert any("KUBE-ROUTER-FORWARD" in item for item in left), left

    try:
        node.down(paths)
        assert node.leftovers(paths) == []
    finally:
        # Also when the check fails: every later test needs the node.
        launcher.up(cluster.paths, ephemeral=True)
    assert get_json(cluster, "node", node_config.NODE_NAME)["status"]["conditions"]
    assert "KUBE-ROUTER-FORWARD" in node.iptables_chains("filter")  # the engine is back
    phase, log = run_pod(cluster, real_namespace, "after", "print('ok')")
    assert phase == "Succeeded", log
