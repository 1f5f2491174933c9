"""The launcher and the build script: bad input, loopback only, idempotence, clean teardown."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.cluster import Cluster

from localcluster import launcher, processes

LAUNCHER = Path(launcher.__file__)
ROOT = LAUNCHER.parents[1]
LAUNCHER_MODULE = ["-m", "localcluster.launcher"]
BUILD_SCRIPT = launcher.BUILD_SCRIPT


# Any download attempt goes through this dead proxy and fails (loopback is never proxied).
NO_NETWORK = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9"}


def run_launcher(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *LAUNCHER_MODULE, "--state-dir", str(state_dir), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, **NO_NETWORK},
        timeout=180,
        check=False,
    )


def test_up_rejects_zero_nodes(tmp_path: Path) -> None:
    result = run_launcher(tmp_path, "up", "--nodes", "0")

    assert result.returncode == 1
    assert result.stderr.strip() == "cluster: --nodes must be at least 1, got 0"


def test_up_without_binaries_says_how_to_build_them(tmp_path: Path) -> None:
    paths = launcher.ClusterPaths(bin_dir=tmp_path / "no-bin", state_dir=tmp_path / "state")

    with pytest.raises(launcher.ClusterError, match=r"run `make cluster-build` first"):
        launcher.up(paths)


def test_build_without_go_fails_with_a_clear_message(tmp_path: Path) -> None:
    env = {"PATH": str(tmp_path), "HOME": os.environ["HOME"]}

    result = subprocess.run(
        ["/bin/bash", str(BUILD_SCRIPT)], capture_output=True, text=True, env=env, check=False
    )

    assert result.returncode == 1
    assert "Go is not installed" in result.stderr


@pytest.mark.cluster
def test_build_is_cached_once_built() -> None:
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], capture_output=True, text=True, timeout=60, check=True
    )

    assert "cluster binaries up to date" in result.stdout


@pytest.mark.cluster
def test_binaries_report_their_pinned_versions(cluster: Cluster) -> None:
    versions = dict(
        line.split("=", 1)
        for line in (BUILD_SCRIPT.parent / "versions.env").read_text().splitlines()
        if line and not line.startswith("#")
    )

    def version_of(binary: str, *args: str) -> str:
        command = [str(cluster.bin_dir / binary), *args]
        return subprocess.run(command, capture_output=True, text=True, check=True).stdout

    kubernetes = versions["KUBERNETES_VERSION"]
    for binary in launcher.KUBE_BINARIES:
        assert version_of(binary, "--version").strip() == f"Kubernetes {kubernetes}"
    etcd = versions["ETCD_VERSION"].lstrip("v")
    assert f"etcd Version: {etcd}" in version_of("etcd", "--version")
    assert versions["KWOK_VERSION"].lstrip("v") in version_of("kwokctl", "--version")
    assert version_of("helm", "version", "--short").startswith(versions["HELM_VERSION"])
    provisioner = versions["LOCAL_PATH_PROVISIONER_VERSION"]
    assert version_of("local-path-provisioner", "--version").split() == [
        "local-path-provisioner",
        "version",
        provisioner,
    ]
    kube_router = [str(cluster.bin_dir / "kube-router"), "--version"]  # it says so on stderr
    said = subprocess.run(kube_router, capture_output=True, text=True, check=True).stderr
    assert f"version {versions['KUBE_ROUTER_VERSION']}," in said
    server = cluster.kubectl("version", "-o", "json").stdout
    assert f'"gitVersion": "{kubernetes}"' in server


@pytest.mark.cluster
def test_components_listen_on_loopback_only_but_the_api_server(cluster: Cluster) -> None:
    """etcd, the controller manager, the scheduler and kwok on loopback; the API server
    where the real node's pods reach it, as on any cluster (every address, like kubeadm's),
    or on loopback too in a cluster without the real node."""
    pids = launcher.component_pids(cluster.paths)
    assert set(pids) >= {"etcd", *launcher.KUBE_BINARIES, "kwok-controller"}

    sockets = subprocess.run(
        ["ss", "-H", "-ltnp"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    ours = {
        name: [line.split()[3] for line in sockets if f"pid={pid}," in line]
        for name, pid in pids.items()
    }

    assert all(ours.values()), f"a component listens nowhere: {ours}"
    for name, addresses in ours.items():
        if name != "kube-apiserver":
            assert all(a.startswith("127.0.0.1:") for a in addresses), (name, addresses)
    [api_server] = ours["kube-apiserver"]
    if launcher.made_for_a_real_node(cluster.paths):
        assert api_server.startswith(("*:", "0.0.0.0:", "[::]:")), api_server
    else:
        assert api_server.startswith("127.0.0.1:"), api_server


@pytest.mark.cluster
def test_up_again_reuses_the_running_cluster(cluster: Cluster) -> None:
    before = launcher.component_pids(cluster.paths)

    started = launcher.up(cluster.paths, ephemeral=True)

    assert started is False
    assert launcher.component_pids(cluster.paths) == before
    nodes = cluster.kubectl("get", "nodes", "-l", launcher.NODE_LABEL, "-o", "name").stdout.split()
    assert nodes == ["node/kwok-gpu-0", "node/kwok-gpu-1"]


@pytest.mark.cluster
@pytest.mark.slow
def test_up_downloads_nothing_and_down_leaves_no_process(tmp_path: Path) -> None:
    paths = launcher.ClusterPaths(bin_dir=launcher.default_bin_dir(), state_dir=tmp_path)

    up = run_launcher(tmp_path, "up", "--nodes", "1", "--no-real-node")
    assert up.returncode == 0, up.stderr
    pids = launcher.component_pids(paths)
    assert len(pids) == 5 and all(processes.is_alive(pid) for pid in pids.values())
    assert run_launcher(tmp_path, "status").returncode == 0

    down = run_launcher(tmp_path, "down")

    assert down.returncode == 0, down.stderr
    assert not any(processes.is_alive(pid) for pid in pids.values())
    assert launcher.cluster_processes(paths) == {}
    assert not paths.cluster_dir.exists() and not paths.kubeconfig.exists()
    assert run_launcher(tmp_path, "status").returncode == 3


@pytest.mark.cluster
@pytest.mark.slow
def test_sigterm_during_up_stops_what_was_started(tmp_path: Path) -> None:
    paths = launcher.ClusterPaths(bin_dir=launcher.default_bin_dir(), state_dir=tmp_path)
    command = [
        sys.executable,
        *LAUNCHER_MODULE,
        "--state-dir",
        str(tmp_path),
        "up",
        "--no-real-node",
    ]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        # Interrupt once the control plane runs, before `up` has finished.
        pids: dict[str, int] = {}
        while "kube-apiserver" not in pids and process.poll() is None:
            time.sleep(0.05)
            pids = launcher.component_pids(paths)
        assert process.poll() is None, "up finished before it could be interrupted"

        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 130, stderr
    assert "stopping what was started" in stderr
    assert not any(processes.is_alive(pid) for pid in pids.values())
    assert launcher.cluster_processes(paths) == {}
    assert not paths.cluster_dir.exists()


SLEEPY_TEST = """
import time

import pytest


@pytest.mark.cluster
def test_holds_the_cluster(cluster):
    print("cluster-ready", flush=True)
    time.sleep(600)
"""


@pytest.mark.cluster
@pytest.mark.slow
def test_sigterm_to_a_test_session_stops_the_cluster_it_started(tmp_path: Path) -> None:
    (tmp_path / "test_sleepy.py").write_text(SLEEPY_TEST)
    state_dir = tmp_path / "state"
    paths = launcher.ClusterPaths(bin_dir=launcher.default_bin_dir(), state_dir=state_dir)
    tests_dir = ROOT / "tests"
    command = [
        *(sys.executable, "-m", "pytest", "-p", "support.cluster", "-s", "-p", "no:cacheprovider"),
        *("-c", str(tests_dir.parent / "pyproject.toml"), "--rootdir", str(tmp_path)),
        str(tmp_path / "test_sleepy.py"),
    ]
    env = {
        **os.environ,
        "TTI_CLUSTER_STATE_DIR": str(state_dir),
        "TTI_REAL_NODE": "0",
        "PYTHONPATH": os.pathsep.join([str(tests_dir), str(ROOT)]),
    }
    session = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert session.stdout is not None
        for line in session.stdout:
            if "cluster-ready" in line:
                break
        pids = launcher.component_pids(paths)
        assert len(pids) == 5 and all(processes.is_alive(pid) for pid in pids.values())

        session.send_signal(signal.SIGTERM)
        output, _ = session.communicate(timeout=120)
    finally:
        if session.poll() is None:
            session.kill()

    assert "KeyboardInterrupt" in output
    assert not any(processes.is_alive(pid) for pid in pids.values())
    assert launcher.cluster_processes(paths) == {}
    assert not paths.cluster_dir.exists()
