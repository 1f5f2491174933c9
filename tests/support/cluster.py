"""pytest plugin: `cluster`, a real Kubernetes control plane, a real node and simulated GPU
nodes.

The API server, etcd, controller manager and scheduler are the real binaries (built by
`make cluster-build`). Pods of a `real_namespace` run on the real node: containerd and the
kubelet run their containers from the project's images. Pods of a `kube_namespace` go to
kwok's simulated nodes (the GPU nodes among them): they get scheduled and marked Running, but
no container runs. See docs/testing.md.

    @pytest.mark.cluster
    def test_something(cluster: Cluster, kube_namespace: str) -> None:
        cluster.kubectl("apply", "-n", kube_namespace, "-f", "-", input=manifest)
        cluster.helm("install", ...)

The session fixture reuses a cluster that is already up (`make cluster-up`) and otherwise
starts one and stops it at the end, unless another test session in the same checkout is still
using it (then the last one out stops it). A test that uses `cluster` must carry
`@pytest.mark.cluster`, so `-m "not cluster"` selects exactly the tests that need none.
"""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from localcluster import launcher

__all__ = [
    "Cluster",
    "CommandError",
    "cluster",
    "fresh_namespace",
    "kube_namespace",
    "real_namespace",
]


class CommandError(subprocess.CalledProcessError):
    """A failed kubectl/helm call whose message carries the tool's stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\nstderr: {self.stderr.strip()}"


@dataclass(frozen=True)
class Cluster:
    """Handle on the running test cluster."""

    paths: launcher.ClusterPaths

    @property
    def kubeconfig(self) -> Path:
        return self.paths.kubeconfig

    @property
    def bin_dir(self) -> Path:
        """The built binaries: kube-apiserver, etcd, kwokctl, helm, ..."""
        return self.paths.bin_dir

    @property
    def kubectl_binary(self) -> Path:
        return self.paths.kubectl

    @property
    def helm_binary(self) -> Path:
        return self.paths.helm

    def env(self) -> dict[str, str]:
        """Environment for a subprocess that talks to the cluster (KUBECONFIG, PATH)."""
        return self.paths.env()

    @property
    def host_address(self) -> str:
        """Where pods on the real node reach a process on this machine: the node's bridge
        address, their gateway. Serve them on it (it exists while the node is up), e.g.
        `python -m support.hf_endpoint ORG/NAME=DIR --host <it>`, or on 0.0.0.0."""
        if not launcher.made_for_a_real_node(self.paths):
            raise RuntimeError("this cluster has no real node: no pod runs to reach this machine")
        return launcher.node_config.HOST_ADDRESS

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl against the cluster; stdout/stderr come back as text."""
        command = [str(self.kubectl_binary), "--kubeconfig", str(self.kubeconfig), *args]
        return self._run(command, input=input, check=check, timeout=timeout)

    def helm(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 300.0
    ) -> subprocess.CompletedProcess[str]:
        """Run the built helm against the cluster."""
        command = [str(self.helm_binary), "--kubeconfig", str(self.kubeconfig), *args]
        return self._run(command, input=input, check=check, timeout=timeout)

    def _run(
        self, command: list[str], *, input: str | None, check: bool, timeout: float
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=True,
            env=self.env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise CommandError(result.returncode, command, result.stdout, result.stderr)
        return result


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Let SIGTERM unwind like Ctrl-C, so fixture teardown stops the cluster's processes."""

    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, launcher.raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The local cluster, started if needed (needs `make cluster-build`; `make test` does it)."""
    paths = launcher.default_paths()
    with sigterm_as_interrupt(), launcher.shared_use(paths):
        try:
            launcher.up(paths, ephemeral=True)
        except launcher.ClusterError as error:
            pytest.fail(f"test cluster: {error}", pytrace=False)
        yield Cluster(paths)


@pytest.fixture
def kube_namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh simulated namespace for one test (its pods go to kwok's nodes), deleted after."""
    yield from fresh_namespace(cluster, "test", simulated=True)


@pytest.fixture
def real_namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace whose pods run on the real node, deleted after the test."""
    yield from fresh_namespace(cluster, "real", simulated=False)


def fresh_namespace(cluster: Cluster, prefix: str, *, simulated: bool) -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    manifest = launcher.namespace(name, simulated=simulated)
    cluster.kubectl("create", "-f", "-", input=json.dumps(manifest))
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", name, "--timeout=60s")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    unmarked = [
        item.nodeid
        for item in items
        if "cluster" in getattr(item, "fixturenames", ())
        and item.get_closest_marker("cluster") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "these tests use the `cluster` fixture but lack @pytest.mark.cluster: "
            + ", ".join(unmarked)
        )
