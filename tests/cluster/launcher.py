"""A local Kubernetes cluster for the tests and the demo: a real control plane, simulated nodes.

`kwokctl create cluster --runtime binary` runs etcd, kube-apiserver, kube-controller-manager,
kube-scheduler and the kwok controller as local processes, from the binaries that
`build-binaries.sh` built from Go modules (nothing is downloaded here). Everything listens on
127.0.0.1. The nodes are kwok's: Node objects with GPU capacity whose pods kwok marks Running;
no container ever runs.

State lives in `.cluster/` of the checkout: `kubeconfig` (for kubectl/helm/the operator) and
`kwok/` (kwokctl's work dir: certificates, etcd data, logs, pid files).

Stdlib only, so it runs before (or without) the project's virtual environment:

    python tests/cluster/launcher.py up [--nodes N]   # idempotent
    python tests/cluster/launcher.py down             # stops every process it started
    python tests/cluster/launcher.py status
    eval "$(python tests/cluster/launcher.py env)"    # KUBECONFIG and PATH (kubectl, helm)
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
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


def log(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


# --- pure builders -------------------------------------------------------------------------


def kwokctl_configuration(paths: ClusterPaths) -> dict[str, Any]:
    """kwokctl's configuration: our binaries, loopback only, no downloads."""
    return {
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
    }


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


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free on 127.0.0.1 (all held open at once, so distinct)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


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
    """Every live process whose command line names this cluster's work dir.

    This also finds a component whose pid file was never written (kwokctl killed between fork
    and write), so teardown leaves nothing behind.
    """
    marker = str(paths.cluster_dir).encode()
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if any(marker in arg for arg in argv) and is_alive(int(proc.name)):
                found[f"{Path(argv[0].decode()).name}[{proc.name}]"] = int(proc.name)
    return found


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; it only waits for its parent to reap it.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def stop_processes(pids: dict[str, int], grace_s: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after a grace period: what kwokctl delete should have done."""
    alive = {name: pid for name, pid in pids.items() if is_alive(pid)}
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            alive = {name: pid for name, pid in alive.items() if is_alive(pid)}
            time.sleep(0.1)
        if not alive:
            return
    raise ClusterError(f"could not stop {', '.join(f'{n} (pid {p})' for n, p in alive.items())}")


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


def wait_for(what: str, probe: Callable[[], bool], timeout_s: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.2)


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

    wait_for("the default service account", has_service_account)


def create(paths: ClusterPaths) -> None:
    ports = dict(zip(PORT_OPTIONS, free_ports(len(PORT_OPTIONS)), strict=True))
    config = kwokctl_configuration(paths)
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


def delete(paths: ClusterPaths) -> None:
    """Stop every component and remove the cluster's state, even if kwokctl cannot."""
    pids = component_pids(paths) | cluster_processes(paths)
    if paths.cluster_dir.exists():
        kwokctl(paths, "delete", "cluster", check=False)
    stop_processes(pids | cluster_processes(paths))
    shutil.rmtree(paths.cluster_dir, ignore_errors=True)
    paths.kubeconfig.unlink(missing_ok=True)
    (paths.state_dir / EPHEMERAL_MARKER).unlink(missing_ok=True)


def up(paths: ClusterPaths, nodes: int = DEFAULT_NODES, *, ephemeral: bool = False) -> bool:
    """Start the cluster unless it is up; returns True when this call started it.

    Interrupted (Ctrl-C, SIGTERM turned into KeyboardInterrupt) or failing half-way, it stops
    what it started. `ephemeral` marks a cluster the test fixture may stop again.
    """
    if nodes < 1:
        raise ClusterError(f"--nodes must be at least 1, got {nodes}")
    require_binaries(paths)
    marker = paths.state_dir / EPHEMERAL_MARKER
    with state_lock(paths):
        started = False
        if is_ready(paths):
            log(f"cluster already up ({paths.kubeconfig})")
        else:
            if paths.cluster_dir.exists():
                log("found a stale cluster (not answering): removing it")
                delete(paths)
            log("starting etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok")
            start = time.monotonic()
            started = True
            try:
                create(paths)
                ensure_nodes(paths, nodes)
            except BaseException:
                log("start failed or interrupted: stopping what was started")
                keep_logs(paths)
                delete(paths)
                raise
            log(
                f"cluster up in {time.monotonic() - start:.1f} s with {nodes} simulated GPU node(s)"
            )
        if not started:
            ensure_nodes(paths, nodes)
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
        prog="launcher.py",
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
    commands.add_parser("down", help="stop every cluster process and delete its state")
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
            up(paths, args.nodes)
        elif args.command == "down":
            down(paths)
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
