"""A local Kubernetes cluster for the tests and the demo: a real control plane, a real node
that runs pods, and simulated GPU nodes.

`kwokctl create cluster --runtime binary` runs etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the kwok controller as local processes, from the binaries that
`build-binaries.sh` built from Go modules (nothing is downloaded here). They listen on
127.0.0.1, except the API server, which pods must reach, as on any cluster. The real node
(`node.py`: containerd, the kubelet, kube-proxy, CoreDNS, configured by `node_config.py`) runs
the project's images, built by `images.py`. The GPU nodes are kwok's: Node objects with GPU
capacity whose pods kwok marks Running; no container runs there. `--no-real-node` (or
TTI_REAL_NODE=0) leaves the real node out: kwok's nodes only, nothing needing root.

State lives in `.cluster/` of the checkout: `kubeconfig` (for kubectl/helm/the operator) and
`kwok/` (kwokctl's work dir: certificates, etcd data, logs, pid files).

Stdlib only, so it runs before (or without) the project's virtual environment:

    python3 -m localcluster.launcher up [--nodes N] [--no-real-node]   # idempotent
    python3 -m localcluster.launcher down             # stops every process it started
    python3 -m localcluster.launcher status
    eval "$(python3 -m localcluster.launcher env)"    # KUBECONFIG and PATH (kubectl, helm)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from localcluster import images, node, node_config, processes
from localcluster.util import free_ports, log, wait_for

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent

BUILD_SCRIPT = HERE / "build-binaries.sh"

CLUSTER_NAME = "tti"
DEFAULT_NODES = 2
GPUS_PER_NODE = 8
NODE_PREFIX = "kwok-gpu-"
# Marks the nodes this launcher manages, so scaling down knows which ones to delete.
NODE_LABEL = "tti.dev/simulated-gpu-node"
# The taint GPU node pools carry (GKE, AKS, the NVIDIA GPU operator): only pods that
# tolerate it, i.e. that asked for a GPU, land on these nodes.
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
# kwok's own convention for its nodes. The CPU nodes the tests add carry it, so that only pods
# of simulated namespaces (which tolerate it) land there, and every other CPU pod on the real node.
KWOK_TAINT = {"key": "kwok.x-k8s.io/node", "value": "fake", "effect": "NoSchedule"}
# A simulated namespace's pods go to kwok's nodes only (PodNodeSelector and
# PodTolerationRestriction read these annotations at admission).
SIMULATED_NAMESPACE_ANNOTATIONS = {
    "scheduler.alpha.kubernetes.io/node-selector": "type=kwok",
    "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(
        [{"key": KWOK_TAINT["key"], "operator": "Exists", "effect": "NoSchedule"}]
    ),
}
# Marks a cluster that the test fixture started (and may stop); `up` from the CLI clears it.
EPHEMERAL_MARKER = "started-by-tests"

KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
REQUIRED_BINARIES = (*KUBE_BINARIES, "etcd", "kwok", "kwokctl", "helm")
# kwokctl's own port choice scans down from 32767 in every process, so clusters created at the
# same moment on one machine pick the same ports; we hand it kernel-chosen free ports instead.
PORT_OPTIONS = (
    "kubeApiserverPort",
    "etcdPort",
    "etcdPeerPort",
    "kubeControllerManagerPort",
    "kubeSchedulerPort",
    "kwokControllerPort",
)
READY_TIMEOUT_S = 60.0


class ClusterError(Exception):
    """A failure the user can act on; the CLI prints it as one line."""


@dataclass(frozen=True)
class ClusterPaths:
    """Where a cluster's binaries and state live."""

    bin_dir: Path
    state_dir: Path

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def kwok_workdir(self) -> Path:
        return self.state_dir / "kwok"

    @property
    def cluster_dir(self) -> Path:
        return self.kwok_workdir / "clusters" / CLUSTER_NAME

    @property
    def kwokctl_config(self) -> Path:
        return self.state_dir / "kwokctl.yaml"

    @property
    def kubectl(self) -> Path:
        """The kubectl the build chose: its own when PATH's is too far from the cluster."""
        built = self.bin_dir / "kubectl"
        if built.exists():
            return built
        found = shutil.which("kubectl")
        if found is None:
            raise ClusterError("kubectl not found: run `make cluster-build` to build one")
        return Path(found)

    @property
    def helm(self) -> Path:
        return self.bin_dir / "helm"

    @property
    def node(self) -> node_config.NodePaths:
        return node_config.NodePaths(state_dir=self.state_dir, bin_dir=self.bin_dir)

    @property
    def kwok_pki(self) -> Path:
        return self.cluster_dir / "pki"

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG and the binaries first on PATH (kwokctl calls kubectl)."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", "")])
        env["KWOK_WORKDIR"] = str(self.kwok_workdir)
        return env


def default_bin_dir() -> Path:
    """The versioned cache folder, as build-binaries.sh names it (it is the one source)."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT), "--print-dir"], capture_output=True, text=True, check=True
    )
    return Path(result.stdout.strip())


def default_paths(state_dir: Path | None = None) -> ClusterPaths:
    """The cache's binaries; state in `state_dir`, else $TTI_CLUSTER_STATE_DIR, else .cluster/."""
    if state_dir is None:
        state_dir = Path(os.environ.get("TTI_CLUSTER_STATE_DIR") or REPO_ROOT / ".cluster")
    return ClusterPaths(bin_dir=default_bin_dir(), state_dir=state_dir)


# --- pure builders -------------------------------------------------------------------------


def real_node_default() -> bool:
    return os.environ.get("TTI_REAL_NODE", "1") not in ("0", "false", "no")


def kwokctl_configuration(paths: ClusterPaths, real_node: bool = False) -> dict[str, Any]:
    """kwokctl's configuration: our binaries, loopback only (but for the API server when a
    real node's pods must reach it), no downloads."""
    config: dict[str, Any] = {
        "apiVersion": "config.kwok.x-k8s.io/v1alpha1",
        "kind": "KwokctlConfiguration",
        "options": {
            "runtime": "binary",
            "bindAddress": "127.0.0.1",
            "kubeApiserverBinary": str(paths.bin_dir / "kube-apiserver"),
            "kubeControllerManagerBinary": str(paths.bin_dir / "kube-controller-manager"),
            "kubeSchedulerBinary": str(paths.bin_dir / "kube-scheduler"),
            "kwokControllerBinary": str(paths.bin_dir / "kwok"),
            "etcdBinary": str(paths.bin_dir / "etcd"),
            "kubectlBinary": str(paths.kubectl),
        },
        "componentsPatches": [
            {
                "name": "kube-apiserver",
                "extraArgs": [
                    {
                        "key": "enable-admission-plugins",
                        "value": "PodNodeSelector,PodTolerationRestriction",
                    }
                ],
            }
        ],
    }
    if real_node:
        config["options"]["kubeApiserverCertSANs"] = node_config.apiserver_cert_sans()
        for patch in node_config.component_patches(paths.kwok_pki):
            merge_patch(config["componentsPatches"], patch)
    return config


def kwok_node(
    name: str,
    resources: dict[str, str],
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """A Node that kwok's controller takes over (it keeps the given capacity and fills in
    the rest of the status), with the labels every Linux node carries."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            # kwok's controller only takes over nodes carrying this annotation.
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "type": "kwok",
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/os": "linux",
                "kubernetes.io/hostname": name,
                **(labels or {}),
            },
        },
        "spec": {"taints": taints} if taints else {},
        "status": {"capacity": resources, "allocatable": resources},
    }


def merge_patch(patches: list[dict[str, Any]], patch: dict[str, Any]) -> None:
    """Add `patch` to kwokctl's componentsPatches, beside any earlier one of its component."""
    for existing in patches:
        if existing["name"] == patch["name"]:
            existing["extraArgs"] += patch["extraArgs"]
            return
    patches.append(patch)


def kwok_cpu_node(name: str) -> dict[str, Any]:
    """A kwok node for CPU pods of simulated namespaces only (see KWOK_TAINT)."""
    resources = {"cpu": "64", "memory": "256Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return kwok_node(name, resources, taints=[KWOK_TAINT])


def namespace(name: str, *, simulated: bool) -> dict[str, Any]:
    """A namespace whose pods run on the real node, or, `simulated`, on kwok's nodes only."""
    metadata: dict[str, Any] = {"name": name}
    if simulated:
        metadata["annotations"] = SIMULATED_NAMESPACE_ANNOTATIONS
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": metadata}


def gpu_node(index: int) -> dict[str, Any]:
    """A Node kwok manages, shaped like one 8-GPU machine of a GPU node pool."""
    resources = {
        "cpu": "64",
        "memory": "512Gi",
        "ephemeral-storage": "1Ti",
        "pods": "110",
        "nvidia.com/gpu": str(GPUS_PER_NODE),
    }
    # What NVIDIA's GPU feature discovery labels real GPU nodes with.
    labels = {
        NODE_LABEL: "true",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.count": str(GPUS_PER_NODE),
    }
    return kwok_node(f"{NODE_PREFIX}{index}", resources, labels, [GPU_TAINT])


def node_list(count: int) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "List", "items": [gpu_node(i) for i in range(count)]}


# --- processes ----------------------------------------------------------------------------


def run(
    paths: ClusterPaths,
    args: Sequence[str | Path],
    *,
    input: str | None = None,
    check: bool = True,
    timeout: float = 120.0,
) -> subprocess.CompletedProcess[str]:
    """Run a tool against this cluster; a failure becomes a ClusterError quoting its stderr."""
    command = [str(a) for a in args]
    try:
        result = subprocess.run(
            command,
            input=input,
            capture_output=True,
            text=True,
            env=paths.env(),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise ClusterError(
            f"{Path(command[0]).name} {command[1:4]} timed out after {timeout:.0f} s"
        ) from error
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()[-5:]
        raise ClusterError(f"{Path(command[0]).name} failed: " + " | ".join(detail))
    return result


def kubectl(
    paths: ClusterPaths, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(
        paths, [paths.kubectl, "--kubeconfig", paths.kubeconfig, *args], input=input, check=check
    )


def kwokctl(
    paths: ClusterPaths, *args: str, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return run(paths, [paths.bin_dir / "kwokctl", "--name", CLUSTER_NAME, *args], check=check)


def component_pids(paths: ClusterPaths) -> dict[str, int]:
    """The processes kwokctl started for this cluster, from its pid files."""
    pids: dict[str, int] = {}
    for pid_file in sorted((paths.cluster_dir / "pids").glob("*.pid")):
        with contextlib.suppress(ValueError, OSError):
            pids[pid_file.stem] = int(pid_file.read_text().strip())
    return pids


def cluster_processes(paths: ClusterPaths) -> dict[str, int]:
    """Every live process whose command line names this cluster's work dir (so teardown
    also finds a component whose pid file was never written)."""
    return processes.naming(str(paths.cluster_dir))


def stop_processes(pids: dict[str, int]) -> None:
    """What kwokctl delete should have done."""
    left = processes.stop(pids)
    if left:
        raise ClusterError(f"could not stop {processes.described(left)}")


# --- the cluster --------------------------------------------------------------------------


@contextlib.contextmanager
def state_lock(paths: ClusterPaths) -> Iterator[None]:
    """Serialises up/down: several test sessions may share one checkout's cluster."""
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    with open(paths.state_dir / "launcher.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def require_binaries(paths: ClusterPaths) -> None:
    missing = [name for name in REQUIRED_BINARIES if not (paths.bin_dir / name).exists()]
    if missing:
        raise ClusterError(
            f"cluster binaries missing in {paths.bin_dir} ({', '.join(missing)}): "
            "run `make cluster-build` first"
        )


def is_ready(paths: ClusterPaths) -> bool:
    """The API server answers /readyz with the kubeconfig we hand out."""
    if not paths.kubeconfig.exists():
        return False
    try:
        result = kubectl(paths, "get", "--raw", "/readyz", "--request-timeout=3s", check=False)
    except (subprocess.TimeoutExpired, ClusterError):
        return False
    return result.returncode == 0 and result.stdout.strip() == "ok"


def ensure_nodes(paths: ClusterPaths, count: int) -> None:
    """Exactly `count` simulated GPU nodes, all Ready, and the `default` service account."""
    kubectl(
        paths,
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        input=json.dumps(node_list(count)),
    )
    listed = kubectl(paths, "get", "nodes", "-l", NODE_LABEL, "-o", "name").stdout.split()
    wanted = {f"node/{NODE_PREFIX}{i}" for i in range(count)}
    extra = sorted(set(listed) - wanted)
    if extra:
        kubectl(paths, "delete", "--wait=false", *extra)
    kubectl(paths, "wait", "--for=condition=Ready", "--timeout=60s", "-l", NODE_LABEL, "node")

    # Pods are refused until the controller manager creates the namespace's service account.
    def has_service_account() -> bool:
        return kubectl(paths, "get", "serviceaccount", "default", check=False).returncode == 0

    wait_for("the default service account", has_service_account, READY_TIMEOUT_S, ClusterError)


def create(paths: ClusterPaths, real_node: bool) -> None:
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS)), strict=True))
    if real_node:
        node.create_bridge()
    config = kwokctl_configuration(paths, real_node)
    config["options"].update(ports)
    paths.kwokctl_config.write_text(json.dumps(config, indent=2) + "\n")
    # --kubeconfig "" keeps kwokctl away from ~/.kube/config; we export our own copy.
    kwokctl(
        paths,
        "create",
        "cluster",
        "--config",
        str(paths.kwokctl_config),
        "--kubeconfig",
        "",
        "--wait",
        "60s",
    )
    kubeconfig = kwokctl(paths, "get", "kubeconfig").stdout
    tmp = paths.kubeconfig.with_suffix(".tmp")
    tmp.write_text(kubeconfig)
    tmp.chmod(0o600)
    tmp.replace(paths.kubeconfig)


def keep_logs(paths: ClusterPaths) -> None:
    """Copy the components' logs out of the work dir that delete() removes."""
    logs = paths.cluster_dir / "logs"
    if logs.is_dir():
        kept = paths.state_dir / "failed-start-logs"
        shutil.rmtree(kept, ignore_errors=True)
        shutil.copytree(logs, kept)
        log(f"component logs kept in {kept}")


def made_for_a_real_node(paths: ClusterPaths) -> bool:
    """The control plane was started so that a real node's pods can reach it."""
    if not paths.kwokctl_config.exists():
        return False
    return "advertise-address" in paths.kwokctl_config.read_text()


def start_real_node(paths: ClusterPaths, refs: list[str]) -> None:

    def cluster_kubectl(
        *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return kubectl(paths, *args, input=input, check=check)

    try:
        node.up(paths.node, paths.kubeconfig, paths.kwok_pki, refs, cluster_kubectl)
    except (node_config.NodeError, images.ImageError) as error:
        raise ClusterError(str(error)) from None


def build_images(paths: ClusterPaths) -> list[str]:
    try:
        node.preflight(paths.node)
        return images.build_all(
            paths.bin_dir, node_config.node_images(), paths.state_dir / "image-logs"
        )
    except (node_config.NodeError, images.ImageError) as error:
        raise ClusterError(str(error)) from None


def delete(paths: ClusterPaths) -> None:
    """Stop every component and remove the cluster's state, even if kwokctl cannot."""
    if made_for_a_real_node(paths):
        try:
            node.down(paths.node)
        except node_config.NodeError as error:
            log(f"real node: {error}")
    pids = component_pids(paths) | cluster_processes(paths)
    if paths.cluster_dir.exists():
        kwokctl(paths, "delete", "cluster", check=False)
    stop_processes(pids | cluster_processes(paths))
    shutil.rmtree(paths.cluster_dir, ignore_errors=True)
    paths.kubeconfig.unlink(missing_ok=True)
    (paths.state_dir / EPHEMERAL_MARKER).unlink(missing_ok=True)


def up(
    paths: ClusterPaths,
    nodes: int = DEFAULT_NODES,
    *,
    ephemeral: bool = False,
    real_node: bool | None = None,
) -> bool:
    """Start the cluster unless it is up; returns True when this call started it.

    Interrupted (Ctrl-C, SIGTERM turned into KeyboardInterrupt) or failing half-way, it stops
    what it started. `ephemeral` marks a cluster the test fixture may stop again. `real_node`
    (default: TTI_REAL_NODE, else on) adds the node that runs pods.
    """
    if nodes < 1:
        raise ClusterError(f"--nodes must be at least 1, got {nodes}")
    if real_node is None:
        real_node = real_node_default()
    require_binaries(paths)
    # Before anything starts: the first build takes minutes, and may fail.
    refs = build_images(paths) if real_node else []
    marker = paths.state_dir / EPHEMERAL_MARKER
    with state_lock(paths):
        started = False
        if is_ready(paths):
            log(f"cluster already up ({paths.kubeconfig})")
            if real_node and not made_for_a_real_node(paths):
                raise ClusterError(
                    "the cluster that is up has no real node: `make cluster-down` first, "
                    "or use it as it is with --no-real-node (TTI_REAL_NODE=0)"
                )
        else:
            if paths.cluster_dir.exists():
                log("found a stale cluster (not answering): removing it")
                delete(paths)
            log("starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok")
            start = time.monotonic()
            started = True
            try:
                create(paths, real_node)
                ensure_nodes(paths, nodes)
                if real_node:
                    start_real_node(paths, refs)
            except BaseException:
                log("start failed or interrupted: stopping what was started")
                keep_logs(paths)
                delete(paths)
                raise
            real = f"the real node {node_config.NODE_NAME} and " if real_node else ""
            log(
                f"cluster up in {time.monotonic() - start:.1f} s with {real}"
                f"{nodes} simulated GPU node(s)"
            )
        if not started:
            ensure_nodes(paths, nodes)
            if real_node:
                start_real_node(paths, refs)
        if ephemeral and started:
            marker.touch()
        elif not ephemeral:
            marker.unlink(missing_ok=True)
        log(f"kubeconfig: {paths.kubeconfig}")
        return started


def down(paths: ClusterPaths) -> None:
    with state_lock(paths):
        if not paths.cluster_dir.exists():
            log("no cluster to stop")
            return
        delete(paths)
        log("cluster stopped; no component is left running")


@contextlib.contextmanager
def shared_use(paths: ClusterPaths) -> Iterator[None]:
    """Hold a shared lock while using the cluster; on exit, the last user stops a cluster
    that a test session started (one from `make cluster-up` is left running)."""
    paths.state_dir.mkdir(parents=True, exist_ok=True)
    with open(paths.state_dir / "users.lock", "w") as users:
        fcntl.flock(users, fcntl.LOCK_SH)
        try:
            yield
        finally:
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another session still uses it
            if (paths.state_dir / EPHEMERAL_MARKER).exists():
                down(paths)


def status(paths: ClusterPaths) -> bool:
    if not is_ready(paths):
        print("cluster: down")
        return False
    server = kubectl(
        paths, "config", "view", "--minify", "-o", "jsonpath={.clusters[0].cluster.server}"
    )
    print(f"cluster: up at {server.stdout}\nkubeconfig: {paths.kubeconfig}")
    print(kubectl(paths, "get", "nodes", "-o", "wide").stdout.rstrip())
    return True


# --- CLI ----------------------------------------------------------------------------------


def raise_keyboard_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python3 -m localcluster.launcher",
        description="Local Kubernetes cluster for the tests and the demo: "
        "a real control plane with simulated (kwok) GPU nodes.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="where the kubeconfig and the cluster's state live (default: .cluster/)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up_cmd = commands.add_parser("up", help="start the cluster (no-op when it is already up)")
    up_cmd.add_argument(
        "--nodes",
        type=int,
        default=DEFAULT_NODES,
        help=f"simulated 8-GPU nodes (default {DEFAULT_NODES})",
    )
    up_cmd.add_argument(
        "--no-real-node",
        dest="real_node",
        action="store_false",
        default=real_node_default(),
        help="leave out the node that runs pods (containerd, kubelet; needs root): "
        "kwok's simulated nodes only (default from TTI_REAL_NODE)",
    )
    commands.add_parser("down", help="stop every cluster process and delete its state")
    commands.add_parser(
        "images",
        help="build the images the real node runs (tti-server, tti-operator, pause, CoreDNS, "
        "the Debian base for the local-path helper pods) "
        "when missing or stale; `up` does it too",
    )
    commands.add_parser("status", help="say whether the cluster is up; list its nodes")
    commands.add_parser(
        "env", help="print shell exports: KUBECONFIG, and PATH with kubectl and helm"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Make SIGTERM unwind like Ctrl-C so an interrupted `up` stops what it started.
    signal.signal(signal.SIGTERM, raise_keyboard_interrupt)
    try:
        paths = default_paths(args.state_dir)
        if args.command == "up":
            up(paths, args.nodes, real_node=args.real_node)
        elif args.command == "down":
            down(paths)
        elif args.command == "images":
            build_images(paths)
        elif args.command == "status":
            return 0 if status(paths) else 3
        elif args.command == "env":
            print(f"export KUBECONFIG={paths.kubeconfig}")
            print(f'export PATH={paths.bin_dir}:"$PATH"')
    except ClusterError as error:
        print(f"cluster: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cluster: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
