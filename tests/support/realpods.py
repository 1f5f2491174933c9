"""A release of the chart on the real node, and the waits and client pods its tests share.

The operator runs as the chart's Deployment, in a pod, and watches one namespace where the
tests apply their models; every model pod runs the real `tti-server` image.
"""

from __future__ import annotations

import base64
import contextlib
import json
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster import demo
from support.cluster import Cluster, fresh_namespace
from support.helm import CHART

TIMEOUT_S = 240.0
#: Waits until HOST:PORT (argv[1]) accepts this pod's connections, at most argv[2] seconds.
#: Under NetworkPolicies a new pod can be refused for its first moments: kube-router, the
#: local cluster's engine, learns a pod's address from the API server, after the pod started.
ADMISSION = """
import socket, sys, time
host, port = sys.argv[1].rsplit(":", 1)
deadline = time.monotonic() + float(sys.argv[2])
while True:
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        break
    except OSError as error:
        if time.monotonic() > deadline:
            sys.exit(f"{sys.argv[1]} refused this pod for {sys.argv[2]} s: {error}")
        time.sleep(0.5)
"""


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

    def service_url(self, model: str) -> str:
        return f"http://{model}.{self.models}.svc:8080"


@contextlib.contextmanager
def install(
    cluster: Cluster, prefix: str, *set_values: str, tokens: str | None = None
) -> Iterator[Release]:
    """Install the chart in a namespace of its own, watching another; uninstall after.

    `tokens`: the gateway's bearer tokens (one per line), from a Secret made first.
    """
    operator_ns = next(fresh_namespace(cluster, f"{prefix}-op", simulated=False))
    models_ns = next(fresh_namespace(cluster, f"{prefix}-models", simulated=False))
    name = f"{prefix}{uuid.uuid4().hex[:5]}"
    values = [arg for value in set_values for arg in ("--set", value)]
    if tokens is not None:
        secret = f"{name}-tokens"
        cluster.kubectl(
            "create", "secret", "generic", secret, "-n", operator_ns,
            f"--from-literal=tokens={tokens}",
        )  # fmt: skip
        values += ["--set", f"gateway.auth.secretName={secret}"]
    cluster.helm(
        "install", name, str(CHART), "-n", operator_ns,
        "--set", f"watchNamespaces={{{models_ns}}}", "--set", f"tests.namespace={models_ns}",
        *values,
        "--wait", "--timeout", "4m",
    )  # fmt: skip
    try:
        yield Release(cluster, name, operator_ns, models_ns)
    finally:
        cluster.helm("uninstall", name, "-n", operator_ns, "--wait", check=False)
        for namespace in (models_ns, operator_ns):
            cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def gateway_pod(release: Release) -> Any:
    """The release's one gateway pod (not one on its way out)."""
    selector = demo.gateway_selector(release.name)
    items = release.get("pods", "-n", release.namespace, "-l", selector)["items"]
    [pod] = [p for p in items if not p["metadata"].get("deletionTimestamp")]
    return pod


def gateway_url(release: Release) -> str:
    """The gateway's Service, as pods of the cluster call it."""
    selector = demo.gateway_selector(release.name)
    [service] = release.get("services", "-n", release.namespace, "-l", selector)["items"]
    name, port = demo.name_and_port(service)
    return f"http://{name}.{release.namespace}.svc:{port}"


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


def wait_ready(release: Release, name: str, timeout_s: float = TIMEOUT_S) -> Any:
    def ready() -> Any:
        resource = release.model(name)
        return resource if ready_condition(resource).get("status") == "True" else None

    return wait_for(f"ttimodel/{name} Ready", ready, timeout_s)


def exec_in(release: Release, namespace: str, pod: str, command: str) -> Any:
    return release.cluster.kubectl(
        "exec", pod, "-n", namespace, "--", "sh", "-c", command, check=False
    )


def admitted_first(pod: Any, address: str) -> None:
    """Start the pod's container only once `address` (HOST:PORT) accepts the pod's
    connections (an init container in the same network namespace waits for that)."""
    [container] = pod["spec"]["containers"]
    wait = {
        "name": "admitted",
        "command": ["python3", "-c", ADMISSION, address, "60"],
        **{key: container[key] for key in ("image", "imagePullPolicy", "securityContext")},
    }
    pod["spec"]["initContainers"] = [wait]


def start_python_pod(
    release: Release,
    name: str,
    script: str,
    *args: str,
    namespace: str | None = None,
    admitted_by: str | None = None,
) -> str:
    """A pod of the server image (its Python and the project's client) running `script`,
    in `namespace` (default: the models'); `admitted_by` (HOST:PORT): once that accepts
    the pod's connections."""
    pod = demo.client_pod(namespace or release.models, "", name, 8, "x")
    pod["metadata"]["name"] = f"{name}-{uuid.uuid4().hex[:6]}"
    pod["spec"]["containers"][0]["command"] = ["python3", "-c", script, *args]
    if admitted_by is not None:
        admitted_first(pod, admitted_by)
    release.kubectl("apply", "-f", "-", input=json.dumps(pod))
    return str(pod["metadata"]["name"])


def pod_finished(
    release: Release, name: str, timeout_s: float = TIMEOUT_S, namespace: str | None = None
) -> str:
    """Wait for a pod that runs to completion; its log, asserting it succeeded."""
    namespace = namespace or release.models

    def finished() -> str:
        phase = release.get("pod", name, "-n", namespace)["status"].get("phase", "")
        return phase if phase in ("Succeeded", "Failed") else ""

    phase = wait_for(f"pod {name} to finish", finished, timeout_s)
    logs = release.kubectl("logs", name, "-n", namespace)
    assert phase == "Succeeded", logs
    return logs


def run_client(
    release: Release,
    url: str,
    model: str,
    tmp_path: Path,
    size: int = 64,
    api_key: str | None = None,
    namespace: str | None = None,
) -> Path:
    """`tti generate` in a client pod against `url` (in `namespace`, default the models'),
    once `url` accepts the pod's connections; the image it got, saved under tmp_path."""
    namespace = namespace or release.models
    pod = demo.client_pod(namespace, url, model, size, "a lighthouse")
    admitted_first(pod, urllib.parse.urlsplit(url).netloc)
    pod["metadata"]["name"] = f"client-{uuid.uuid4().hex[:6]}"
    if api_key is not None:
        pod["spec"]["containers"][0]["env"] = [{"name": "TTI_API_KEY", "value": api_key}]
    release.kubectl("apply", "-f", "-", input=json.dumps(pod))
    logs = pod_finished(release, pod["metadata"]["name"], namespace=namespace)
    path = tmp_path / f"{model.replace('/', '-')}-{pod['metadata']['name']}.png"
    path.write_bytes(base64.b64decode(logs.strip().splitlines()[-1]))
    return path


def metric(pod: Any, name: str) -> float:
    """The sum of a metric's samples on a model pod's /metrics (read from the host, which
    reaches pod IPs through the node's bridge)."""
    url = f"http://{pod['status']['podIP']}:8080/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))
