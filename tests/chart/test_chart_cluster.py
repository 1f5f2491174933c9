"""The chart on the real test cluster: install, upgrade, uninstall, and RBAC that is enough.

The RBAC test runs the real operator as a local process authenticated as the chart's
ServiceAccount (a token from `kubectl create token`), watching one namespace. It must take a
model to Ready with no permission error in its log (the rules are enough), and requests
outside its rules are refused by the API server (they are no more than that). The
operator's own pod from the chart is scheduled on a kwok node, where no container runs:
that is why the operator runs here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support.cluster import Cluster, fresh_namespace
from support.helm import CHART
from support.server import free_port

from localcluster import launcher
from localcluster.demo import Kube, http_ok, service_account_kubeconfig

pytestmark = pytest.mark.cluster

READY_TIMEOUT_S = 120.0
CPU_NODE = "kwok-cpu-chart"


@pytest.fixture
def release_namespace(cluster: Cluster) -> Iterator[str]:
    """A second fresh simulated namespace, for the release (the operator's own objects)."""
    yield from fresh_namespace(cluster, "rel", simulated=True)


@pytest.fixture(scope="module")
def cpu_nodes(cluster: Cluster) -> Iterator[None]:
    """A kwok node for the simulated namespaces' pods that ask for no GPU (the stub model)."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(launcher.kwok_cpu_node(CPU_NODE)))
    yield
    cluster.kubectl("delete", "node", CPU_NODE, "--wait=false")


def get_json(cluster: Cluster, *args: str) -> Any:
    return json.loads(cluster.kubectl("get", *args, "-o", "json").stdout)


def release_objects(cluster: Cluster, release: str, namespaces: list[str]) -> set[str]:
    """kind/namespace/name of everything the release labelled, namespaced or not."""
    found = set()
    selector = f"app.kubernetes.io/instance={release}"
    kinds = "serviceaccount,deployment,role,rolebinding,texttoimagemodel"
    for namespace in namespaces:
        items = get_json(cluster, kinds, "-n", namespace, "-l", selector)["items"]
        found |= {f"{o['kind']}/{namespace}/{o['metadata']['name']}" for o in items}
    cluster_scoped = get_json(cluster, "clusterrole,clusterrolebinding", "-l", selector)["items"]
    found |= {f"{o['kind']}/{o['metadata']['name']}" for o in cluster_scoped}
    return found


def test_install_upgrade_uninstall(
    cluster: Cluster, kube_namespace: str, release_namespace: str, tmp_path: Path
) -> None:
    release = f"r{uuid.uuid4().hex[:6]}"
    model = {"name": "stub", "namespace": kube_namespace, "spec": {"model": "stub", "gpus": 0}}
    values = tmp_path / "values.json"
    values.write_text(json.dumps({"watchNamespaces": [kube_namespace], "models": [model]}))
    try:
        installed = cluster.helm(
            "install", release, str(CHART), "-n", release_namespace, "--values", str(values)
        ).stdout
        # NOTES.txt: how to apply a model, wait for it and call it, in the watched namespace.
        assert f"It watches these namespaces only: {kube_namespace}" in installed
        assert f"kubectl apply -n {kube_namespace}" in installed
        assert f"http://sdxl-turbo.{kube_namespace}.svc:8080/api/v1/task/text-to-image" in installed
        assert f"helm test -n {release_namespace} {release}" in installed
        fullname = f"{release}-tti-operator"
        gateway = f"{fullname}-gateway"
        assert f"http://{gateway}.{release_namespace}.svc:80/v1" in installed
        assert release_objects(cluster, release, [release_namespace, kube_namespace]) == {
            f"ServiceAccount/{release_namespace}/{fullname}",
            f"Deployment/{release_namespace}/{fullname}",
            f"Role/{kube_namespace}/{fullname}",
            f"RoleBinding/{kube_namespace}/{fullname}",
            f"TextToImageModel/{kube_namespace}/stub",
            # The gateway, with an account and a Role of its own.
            f"ServiceAccount/{release_namespace}/{gateway}",
            f"Deployment/{release_namespace}/{gateway}",
            f"Role/{kube_namespace}/{gateway}",
            f"RoleBinding/{kube_namespace}/{gateway}",
        }
        # The CRD came with the chart (or was already there) and is served.
        cluster.kubectl("get", "crd", "texttoimagemodels.tti.dev")

        cluster.helm(
            "upgrade",
            release,
            str(CHART),
            "-n",
            release_namespace,
            "--values",
            str(values),
            "--set",
            "serverImage.tag=0.2.0",
        )
        deployment = get_json(cluster, "deployment", fullname, "-n", release_namespace)
        # The API server stores an env var whose value is "" without a `value`.
        env = {
            e["name"]: e.get("value", "")
            for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["TTI_OPERATOR_SERVER_IMAGE"] == "tti-server:0.2.0"
        history = json.loads(
            cluster.helm("history", release, "-n", release_namespace, "-o", "json").stdout
        )
        assert [h["status"] for h in history] == ["superseded", "deployed"]
    finally:
        cluster.helm("uninstall", release, "-n", release_namespace, "--wait", check=False)
    assert release_objects(cluster, release, [release_namespace, kube_namespace]) == set()
    # Helm never deletes what it installed from crds/: the models of other releases live on.
    cluster.kubectl("get", "crd", "texttoimagemodels.tti.dev")


def test_cluster_wide_install_binds_a_cluster_role(
    cluster: Cluster, release_namespace: str
) -> None:
    release = f"r{uuid.uuid4().hex[:6]}"
    try:
        cluster.helm("install", release, str(CHART), "-n", release_namespace)
        found = release_objects(cluster, release, [release_namespace])
        fullname = f"{release}-tti-operator"
        assert f"ClusterRole/{fullname}" in found
        assert f"ClusterRoleBinding/{fullname}" in found
        assert not [o for o in found if o.startswith(("Role/", "RoleBinding/"))]
    finally:
        cluster.helm("uninstall", release, "-n", release_namespace, "--wait", check=False)
    assert release_objects(cluster, release, [release_namespace]) == set()


class OperatorAs:
    """The operator as a local process with the chart Deployment's settings and a token."""

    def __init__(self, kubeconfig: Path, env: dict[str, str], log: Path) -> None:
        self.liveness = free_port()
        self.log = log
        settings = {**env, "TTI_OPERATOR_LIVENESS_PORT": str(self.liveness)}
        settings["TTI_OPERATOR_LOG_FORMAT"] = "plain"
        # Only the ServiceAccount's kubeconfig: nothing of the admin's may leak in.
        base = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "tti-operator")],
                env={**base, **settings, "KUBECONFIG": str(kubeconfig)},
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def wait_for(
    what: str, probe: Any, operator: OperatorAs, timeout_s: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        assert operator.process.poll() is None, (
            f"the operator exited:\n{operator.log_text()[-3000:]}"
        )
        assert time.monotonic() < deadline, f"{what}: timed out\n{operator.log_text()[-3000:]}"
        time.sleep(0.5)


def is_ready(cluster: Cluster, namespace: str, name: str) -> bool:
    model = get_json(cluster, "ttimodel", name, "-n", namespace)
    conditions = model.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def denied(kubeconfig: Path, cluster: Cluster, *args: str) -> str:
    """Run kubectl as the ServiceAccount; it must be refused. Returns the refusal."""
    result = subprocess.run(
        [str(cluster.kubectl_binary), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode != 0, f"kubectl {' '.join(args)} was allowed:\n{result.stdout}"
    assert "forbidden" in result.stderr.lower(), result.stderr
    return result.stderr


@pytest.mark.usefixtures("cpu_nodes")
def test_operator_with_the_charts_rbac_reconciles_and_is_refused_the_rest(
    cluster: Cluster, kube_namespace: str, release_namespace: str, tmp_path: Path
) -> None:
    release = f"r{uuid.uuid4().hex[:6]}"
    watched = kube_namespace
    cluster.helm(
        "install",
        release,
        str(CHART),
        "-n",
        release_namespace,
        "--set",
        f"watchNamespaces={{{watched}}}",
    )
    operator: OperatorAs | None = None
    try:
        fullname = f"{release}-tti-operator"
        kube = Kube(cluster.paths)
        kubeconfig = service_account_kubeconfig(
            kube, release_namespace, fullname, tmp_path / "operator.kubeconfig"
        )
        deployment = get_json(cluster, "deployment", fullname, "-n", release_namespace)
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        env = {e["name"]: e.get("value", "") for e in container["env"]}
        operator = OperatorAs(kubeconfig, env, tmp_path / "operator.log")
        wait_for(
            "liveness", lambda: http_ok(f"http://127.0.0.1:{operator.liveness}/healthz"), operator
        )

        sample = Path(CHART).parents[1] / "crds" / "samples" / "stub.yaml"
        cluster.kubectl("apply", "-n", watched, "-f", str(sample))
        wait_for("ttimodel/stub Ready", lambda: is_ready(cluster, watched, "stub"), operator)
        model = get_json(cluster, "ttimodel", "stub", "-n", watched)
        assert model["status"]["endpoint"] == f"http://stub.{watched}.svc:8080"
        # This operator alone wrote the model's Deployment: its image, written once. (Another
        # operator serving the namespace too would rewrite the image, back and forth.)
        served = get_json(cluster, "deployment", "stub", "-n", watched)
        [server] = served["spec"]["template"]["spec"]["containers"]
        assert server["image"] == env["TTI_OPERATOR_SERVER_IMAGE"]
        assert served["metadata"]["generation"] == 1, served["metadata"]
        # The rules are enough: kopf logs every refused call, and there is none.
        log = operator.log_text()
        assert "forbidden" not in log.lower(), log[-3000:]

        # ... and no more than that: the API server refuses the rest.
        denied(kubeconfig, cluster, "get", "secrets", "-n", watched)
        denied(kubeconfig, cluster, "get", "secrets", "-n", release_namespace)
        # ConfigMaps: listed, watched, created and patched (each model's adapters manifest),
        # never read by name nor deleted (the model's garbage collection removes its own).
        denied(kubeconfig, cluster, "get", "configmap", "kube-root-ca.crt", "-n", watched)
        denied(kubeconfig, cluster, "delete", "configmap", "stub-adapters", "-n", watched)
        denied(kubeconfig, cluster, "get", "deployments", "-n", "default")
        denied(kubeconfig, cluster, "get", "ttimodels", "-n", "default")
        denied(kubeconfig, cluster, "get", "nodes")
        denied(kubeconfig, cluster, "delete", "deployment", "stub", "-n", watched)
        denied(kubeconfig, cluster, "create", "namespace", f"x-{uuid.uuid4().hex[:6]}")
    finally:
        if operator is not None:
            operator.stop()
        cluster.helm("uninstall", release, "-n", release_namespace, "--wait", check=False)
