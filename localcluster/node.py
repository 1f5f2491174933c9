"""The real node: containerd, the kubelet and kube-proxy on this machine, beside kwok's nodes.

Pods scheduled to it run for real: images from containerd's own store (built and imported by
`images.py`; nothing is pulled), networking by the CNI bridge plugin on a bridge of its own,
Services by kube-proxy in iptables mode, NetworkPolicies by kube-router's policy controller,
names by CoreDNS running as a pod, PersistentVolumes by Rancher's local-path-provisioner (a
process beside the kubelet, its volumes directories under the node's folder). The kwok nodes
stay for what needs GPUs; kwok's controller is told to leave this node alone.

What exists only while the node is up, and `down` removes, also after a crash: the processes
(containerd and its shims, the kubelet, kube-proxy, kube-router, the provisioner), the volumes,
the bridge, kube-proxy's, kube-router's and the CNI plugins' iptables chains, kube-router's
ipsets, the pods' mounts and network namespaces, the kubelet's cgroups.
Images stay in containerd's store under the cache folder, so a second `up` starts fast.

Needs root (containerd, iptables, mounts), as on any Kubernetes node. What the components are
configured with (addresses, paths, their configuration files) is `node_config.py`'s, as data;
this module writes it out, runs the processes and takes them down.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from localcluster import images, processes
from localcluster.node_config import (
    BRIDGE,
    CNI_NETWORK,
    DNS_IP,
    NODE_IP,
    NODE_LABEL,
    NODE_NAME,
    POD_CIDR,
    POLICY_SET_PREFIXES,
    RUN_DIR,
    STORAGE_CLASS,
    NodeError,
    NodePaths,
    cni_conflist,
    containerd_config,
    coredns_objects,
    kube_proxy_config,
    kube_router_args,
    kubelet_config,
    local_path_config,
    local_path_helper_pod,
    local_path_objects,
    local_path_provisioner_args,
)
from localcluster.util import free_ports, log, wait_for

REQUIRED_COMMANDS = (
    "containerd", "containerd-shim-runc-v2", "runc", "ctr", "iptables", "ip", "ipset"
)  # fmt: skip
PROVISIONER = "local-path-provisioner"
NODE_BINARIES = ("kubelet", "kube-proxy", "kube-router", "coredns", "crictl", "pause", PROVISIONER)
# What its controller logs once its informers have synced: from then on it serves claims.
PROVISIONER_STARTED = "Started provisioner controller"
# A component that exits at start is started again this many times in all, and the error
# shows its last lines (so a failure on a machine we cannot log into still says why).
START_ATTEMPTS = 3
EXIT_LINES = 6
READY_TIMEOUT_S = 120.0


class Kubectl(Protocol):
    """Runs kubectl against this cluster (the launcher's)."""

    def __call__(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]: ...


# --- commands -----------------------------------------------------------------------------


def sh(
    *args: str | Path, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    command = [str(a) for a in args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        detail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        raise NodeError(f"{Path(command[0]).name} {' '.join(command[1:3])} failed: {detail}")
    return result


def start_process(paths: NodePaths, name: str, argv: Sequence[str | Path]) -> int:
    """A component in a session of its own that outlives this command (no child of ours
    left to reap), logging to logs/NAME.log."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.pids.mkdir(parents=True, exist_ok=True)
    script = 'setsid "$@" >>"$LOG" 2>&1 </dev/null & echo $!'
    started = subprocess.run(
        ["sh", "-c", script, "sh", *map(str, argv)],
        env={**os.environ, "LOG": str(paths.logs / f"{name}.log")},
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(started.stdout)
    (paths.pids / f"{name}.pid").write_text(str(pid))
    return pid


class ComponentExited(Exception):
    def __init__(self, logged: str) -> None:
        super().__init__("exited at start")
        self.logged = logged


def processes_naming(marker: str) -> list[int]:
    return list(processes.naming(marker).values())


def stop_pids(pids: Sequence[int]) -> None:
    left = processes.stop({str(pid): pid for pid in pids})
    if left:
        raise NodeError(f"could not stop {processes.described(left)}")


def stop_component(paths: NodePaths, name: str) -> None:
    pid_file = paths.pids / f"{name}.pid"
    with contextlib.suppress(OSError, ValueError):
        stop_pids([int(pid_file.read_text())])
    pid_file.unlink(missing_ok=True)


def containerd_answers(paths: NodePaths) -> bool:
    return (
        paths.socket.exists()
        and sh(*paths.ctr(), "version", check=False, timeout=10).returncode == 0
    )


def run_containerd(paths: NodePaths) -> None:
    """containerd on the configuration written in its folder, once it answers."""
    start_process(paths, "containerd", ["containerd", "--config", paths.config("containerd.toml")])
    log_file = paths.logs / "containerd.log"
    wait_for("containerd", lambda: containerd_answers(paths), 30, NodeError, log_file)


# --- preflight ----------------------------------------------------------------------------


def preflight(paths: NodePaths) -> None:
    """Everything the node needs, checked before anything starts."""
    if os.geteuid() != 0:
        raise NodeError(
            "the real node needs root (containerd, iptables, mounts): "
            "run as root, or leave the node out with --no-real-node"
        )
    missing = [name for name in REQUIRED_COMMANDS if shutil.which(name) is None]
    if missing:
        raise NodeError(f"missing {', '.join(missing)}: run `make node-deps` (Debian's packages)")
    absent = [name for name in NODE_BINARIES if not (paths.bin_dir / name).exists()]
    if absent:
        raise NodeError(
            f"node binaries missing in {paths.bin_dir} ({', '.join(absent)}): "
            "run `make cluster-build`"
        )
    if paths.owner.exists():
        owner = Path(paths.owner.read_text().strip())
        if owner != paths.state_dir and containerd_answers(paths):
            raise NodeError(
                f"the real node of the cluster in {owner} is running (one per machine): "
                f"stop it first (python3 -m localcluster.launcher --state-dir {owner} down)"
            )


# --- up -----------------------------------------------------------------------------------


def create_bridge() -> None:
    """The node's bridge with its address, before the API server starts: the API server's
    certificate names the addresses this machine has at its creation."""
    if sh("ip", "link", "show", BRIDGE, check=False).returncode != 0:
        sh("ip", "link", "add", BRIDGE, "type", "bridge")
    if NODE_IP not in sh("ip", "-4", "addr", "show", BRIDGE).stdout:
        sh("ip", "addr", "add", f"{NODE_IP}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
    sh("ip", "link", "set", BRIDGE, "up")


def start_containerd(paths: NodePaths) -> None:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    paths.owner.write_text(str(paths.state_dir))
    if containerd_answers(paths):
        return
    paths.dir.mkdir(parents=True, exist_ok=True)
    paths.cni_conf_dir.mkdir(parents=True, exist_ok=True)
    (paths.cni_conf_dir / "10-tti.conflist").write_text(json.dumps(cni_conflist(paths), indent=2))
    paths.config("containerd.toml").write_text(containerd_config(paths))
    run_containerd(paths)


def load_images(paths: NodePaths, refs: Sequence[str]) -> None:
    images.import_into_containerd(refs, paths.ctr(), paths.crictl())


def start_kubelet(paths: NodePaths, kubeconfig: Path, kwok_pki: Path) -> None:
    port, healthz = free_ports(2)
    config = paths.config("kubelet.json")
    config.write_text(json.dumps(kubelet_config(paths, kwok_pki, port, healthz), indent=2))
    paths.kubelet_root.mkdir(parents=True, exist_ok=True)
    start_process(
        paths,
        "kubelet",
        [
            paths.bin_dir / "kubelet",
            f"--config={config}",
            f"--kubeconfig={kubeconfig}",
            f"--root-dir={paths.kubelet_root}",
            f"--cert-dir={paths.dir / 'kubelet-pki'}",
            f"--hostname-override={NODE_NAME}",
            f"--node-ip={NODE_IP}",
            f"--node-labels={NODE_LABEL}=true",
            "--v=1",
        ],
    )


def start_kube_proxy(paths: NodePaths, kubeconfig: Path) -> None:
    config = paths.config("kube-proxy.json")
    config.write_text(json.dumps(kube_proxy_config(kubeconfig, *free_ports(2)), indent=2))
    start_process(
        paths, "kube-proxy", [paths.bin_dir / "kube-proxy", f"--config={config}", "--v=1"]
    )


def kube_router_kubeconfig(paths: NodePaths) -> Path:
    """kube-router's own copy of the kubeconfig: its path on the command line tells this
    node's kube-router from any other process."""
    return paths.config("kube-router.kubeconfig")


def start_kube_router(paths: NodePaths, kubeconfig: Path) -> None:
    """The NetworkPolicy engine, ready once its chains hook into the filter table."""
    own = kube_router_kubeconfig(paths)
    own.write_text(kubeconfig.read_text())
    start_until_ready(
        paths,
        "kube-router",
        kube_router_args(paths, own),
        marker=str(own),
        ready=lambda _logged: "KUBE-ROUTER-FORWARD" in iptables_chains("filter"),
    )


def provisioner_running(paths: NodePaths) -> bool:
    return bool(processes_naming(str(paths.provisioner_config)))


def start_local_path_provisioner(paths: NodePaths, kubeconfig: Path, kubectl: Kubectl) -> None:
    """Its objects in the cluster (namespace, helper scripts, storage classes), its files, the
    process; returns once its controller serves claims."""
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": local_path_objects()}),
    )
    if provisioner_running(paths):
        return
    paths.volumes.mkdir(parents=True, exist_ok=True)
    paths.provisioner_config.write_text(json.dumps(local_path_config(paths), indent=2))
    paths.helper_pod_template.write_text(json.dumps(local_path_helper_pod(), indent=2))
    start_until_ready(
        paths,
        PROVISIONER,
        local_path_provisioner_args(paths, kubeconfig),
        marker=str(paths.provisioner_config),
        ready=lambda logged: PROVISIONER_STARTED in logged,
    )


def log_since(log_file: Path, offset: int) -> str:
    with contextlib.suppress(OSError), log_file.open("rb") as out:
        out.seek(offset)
        return out.read().decode(errors="replace")
    return ""


def start_until_ready(
    paths: NodePaths,
    name: str,
    argv: Sequence[str | Path],
    *,
    marker: str,
    ready: Callable[[str], bool],
    timeout_s: float = 60.0,
    attempts: int = START_ATTEMPTS,
) -> None:
    """Start NAME and wait until `ready` holds for what it has logged since. A component that
    exits first is started again (up to `attempts` times in all); the error names the last
    lines it wrote. Alive means a process naming `marker` (what it execs into) is."""
    log_file = paths.logs / f"{name}.log"
    for attempt in range(1, attempts + 1):
        seen = log_file.stat().st_size if log_file.exists() else 0
        start_process(paths, name, argv)
        try:
            wait_for(
                name, started_probe(log_file, seen, marker, ready), timeout_s, NodeError, log_file
            )
            return
        except ComponentExited as exited:
            last = " | ".join(exited.logged.strip().splitlines()[-EXIT_LINES:]) or "(no output)"
            if attempt == attempts:
                raise NodeError(
                    f"{name} exited at start {attempts} times; it last wrote: {last} "
                    f"(log: {log_file})"
                ) from None
            log(f"{name} exited at start (attempt {attempt} of {attempts}): {last}; again")
            time.sleep(attempt)


def started_probe(
    log_file: Path, offset: int, marker: str, ready: Callable[[str], bool]
) -> Callable[[], bool]:
    """True once `ready` holds for the log written past `offset`; ComponentExited once no
    process names `marker` any more."""

    def started() -> bool:
        alive = bool(processes_naming(marker))
        logged = log_since(log_file, offset)  # read after: all it wrote, if it has exited
        if ready(logged):
            return True
        if not alive:
            raise ComponentExited(logged)
        return False

    return started


def remember_ip_forward(paths: NodePaths) -> None:
    """The bridge plugin turns IP forwarding on; `down` puts back what was there."""
    paths.dir.mkdir(parents=True, exist_ok=True)
    saved = paths.config("ip_forward.saved")
    if not saved.exists():
        saved.write_text(Path("/proc/sys/net/ipv4/ip_forward").read_text())


def node_ready(kubectl: Kubectl) -> bool:
    result = kubectl(
        "get",
        "node",
        NODE_NAME,
        "-o",
        "jsonpath={.status.conditions[?(@.type=='Ready')].status}",
        check=False,
    )
    return bool(result.returncode == 0 and result.stdout.strip() == "True")


def up(
    paths: NodePaths, kubeconfig: Path, kwok_pki: Path, refs: Sequence[str], kubectl: Kubectl
) -> None:
    """containerd with the images, the kubelet registered and Ready, kube-proxy, CoreDNS."""
    preflight(paths)
    create_bridge()
    remember_ip_forward(paths)
    start_containerd(paths)
    load_images(paths, refs)
    if not processes_naming(str(paths.config("kubelet.json"))):
        start_kubelet(paths, kubeconfig, kwok_pki)
    wait_for(
        f"node {NODE_NAME} to be Ready",
        lambda: node_ready(kubectl),
        READY_TIMEOUT_S,
        NodeError,
        paths.logs / "kubelet.log",
    )
    if not processes_naming(str(paths.config("kube-proxy.json"))):
        start_kube_proxy(paths, kubeconfig)
    if not processes_naming(str(kube_router_kubeconfig(paths))):
        start_kube_router(paths, kubeconfig)
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": coredns_objects()}),
    )
    kubectl("rollout", "status", "-n", "kube-system", "deployment/coredns", "--timeout=120s")
    start_local_path_provisioner(paths, kubeconfig, kubectl)
    log(
        f"real node {NODE_NAME} Ready: containerd, kubelet, kube-proxy, kube-router (policies), "
        f"CoreDNS at {DNS_IP}, "
        f"storage class {STORAGE_CLASS} (the default)"
    )


# --- down ---------------------------------------------------------------------------------


def remove_pods(paths: NodePaths) -> None:
    """Every pod sandbox stopped and removed through the CRI, so the CNI plugins release their
    addresses, veths, namespaces and iptables rules as they do on a drained node."""
    if not containerd_answers(paths):
        if not (paths.containerd_root.exists() and paths.config("containerd.toml").exists()):
            return
        # After a crash: containerd knows what it ran; start it to clean up after itself.
        run_containerd(paths)
    sh(*paths.crictl(), "rmp", "--all", "--force", check=False, timeout=180)
    tasks = sh(*paths.ctr(), "tasks", "list", "--quiet", check=False).stdout.split()
    for task in tasks:
        sh(*paths.ctr(), "tasks", "kill", "--signal", "SIGKILL", task, check=False)
        sh(*paths.ctr(), "tasks", "delete", "--force", task, check=False)
    for container in sh(*paths.ctr(), "containers", "list", "--quiet", check=False).stdout.split():
        sh(*paths.ctr(), "containers", "delete", container, check=False)


def mounts_under(*roots: Path) -> list[str]:
    """Mount points at or below `roots` (the kubelet bind-mounts its root dir onto itself)."""
    resolved = [str(root.resolve()) for root in roots]
    mounts = [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()]
    return [m for m in mounts if any(m == r or m.startswith(f"{r}/") for r in resolved)]


def unmount_under(*roots: Path) -> None:
    """Unmount everything mounted at or below `roots`, deepest first."""
    for mount in sorted(set(mounts_under(*roots)), key=len, reverse=True):
        if sh("umount", mount, check=False).returncode != 0:
            sh("umount", "-l", mount, check=False)


IPTABLES = ("iptables", "ip6tables")
TABLES = ("filter", "nat", "mangle")


def iptables_chains(table: str, command: str = "iptables") -> list[str]:
    listing = sh(f"{command}-save", "-t", table, check=False).stdout
    return [line[1:].split()[0] for line in listing.splitlines() if line.startswith(":")]


def jumps_into_kube_chain(rule: list[str]) -> bool:
    """An `-A CHAIN ... -j KUBE-...` rule of a chain that is not itself a KUBE- one."""
    if rule[:1] != ["-A"] or rule[1].startswith("KUBE-") or "-j" not in rule:
        return False
    return rule[rule.index("-j") + 1].startswith("KUBE-")


def remove_kube_chains() -> None:
    """The KUBE-* chains of the kubelet and kube-proxy, and the rules that jump to them
    (`kube-proxy --cleanup` leaves the kubelet's own and the canaries)."""
    for command in IPTABLES:
        for table in TABLES:
            listing = sh(f"{command}-save", "-t", table, check=False).stdout.splitlines()
            ours = [c for c in iptables_chains(table, command) if c.startswith("KUBE-")]
            for rule in map(shlex.split, listing):
                if jumps_into_kube_chain(rule):
                    sh(command, "-t", table, "-D", *rule[1:], check=False)
            for action in ("-F", "-X"):
                for chain in ours:
                    sh(command, "-t", table, action, chain, check=False)


def remove_cni_chains() -> None:
    """The portmap plugin's shared chains, once no rule of any pod is left in them."""
    for chain in (
        "CNI-HOSTPORT-DNAT",
        "CNI-HOSTPORT-SNAT",
        "CNI-HOSTPORT-MASQ",
        "CNI-HOSTPORT-SETMARK",
    ):
        if chain not in iptables_chains("nat"):
            continue
        rules = sh("iptables", "-t", "nat", "-S", chain, check=False).stdout.splitlines()
        if any(rule.startswith("-A") for rule in rules):
            continue
        for parent in ("PREROUTING", "OUTPUT", "POSTROUTING"):
            while (
                sh("iptables", "-t", "nat", "-D", parent, "-j", chain, check=False).returncode == 0
            ):
                pass
            sh(
                "iptables",
                "-t",
                "nat",
                "-D",
                parent,
                "-m",
                "addrtype",
                "--dst-type",
                "LOCAL",
                "-j",
                chain,
                check=False,
            )
        sh("iptables", "-t", "nat", "-X", chain, check=False)


def remove_pod_chains(network: str = CNI_NETWORK) -> None:
    """Per-pod masquerade chains of this node's network that a CNI DEL cut short left behind
    (a sandbox torn down while containerd was killed: the rule that jumped to its chain is
    gone, the chain is not). With the network going away, every one of them is garbage."""
    mark = f'name: \\"{network}\\"'  # as iptables-save quotes the plugin's comment
    listing = sh("iptables-save", "-t", "nat", check=False).stdout.splitlines()
    ours = {
        line.split()[1]
        for line in listing
        if line.startswith("-A CNI-") and not line.startswith("-A CNI-HOSTPORT-") and mark in line
    }
    for words in map(shlex.split, listing):
        if words[:1] == ["-A"] and words[-2:-1] == ["-j"] and words[-1] in ours:
            sh("iptables", "-t", "nat", "-D", *words[1:], check=False)
    for action in ("-F", "-X"):
        for chain in ours:
            sh("iptables", "-t", "nat", action, chain, check=False)


def policy_sets(prefixes: Sequence[str] = POLICY_SET_PREFIXES) -> list[str]:
    """The ipsets named with one of `prefixes` (kube-router's: its pods' and peers' sets)."""
    listing = sh("ipset", "list", "-name", check=False).stdout if shutil.which("ipset") else ""
    return [name for name in listing.split() if name.startswith(tuple(prefixes))]


def remove_policy_sets(
    prefixes: Sequence[str] = POLICY_SET_PREFIXES, patience_s: float = 10.0
) -> None:
    """kube-router's ipsets, once no rule refers to them (its KUBE-* chains are gone first).
    The kernel lets go of a set a moment after the last rule naming it is deleted ("in use
    by a kernel component" until then): destroyed again until none is left or patience ends."""
    deadline = time.monotonic() + patience_s
    while (left := policy_sets(prefixes)) and time.monotonic() < deadline:
        for name in left:
            sh("ipset", "destroy", name, check=False)
        if policy_sets(prefixes):
            time.sleep(0.2)


def remove_kubelet_cgroups() -> None:
    """The kubelet's QoS cgroups (kubepods/...) in every hierarchy, innermost first."""
    for hierarchy in Path("/sys/fs/cgroup").iterdir():
        top = hierarchy / "kubepods"
        if not top.is_dir():
            continue
        for cgroup in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            with contextlib.suppress(OSError):
                cgroup.rmdir()
        with contextlib.suppress(OSError):
            top.rmdir()


def kubelet_cgroups_left() -> list[str]:
    return [
        str(h / "kubepods") for h in Path("/sys/fs/cgroup").iterdir() if (h / "kubepods").is_dir()
    ]


def down(paths: NodePaths) -> None:
    """Stop the node and remove everything it put on this machine but its image store."""
    if paths.owner.exists() and Path(paths.owner.read_text().strip()) != paths.state_dir:
        # Another cluster's node runs on this machine now: its bridge, chains and
        # containerd are not ours to remove.
        shutil.rmtree(paths.dir, ignore_errors=True)
        return
    # First, so that it starts no helper pod while the node goes.
    stop_component(paths, PROVISIONER)
    stop_pids(processes_naming(str(paths.provisioner_config)))
    stop_component(paths, "kubelet")
    remove_pods(paths)
    stop_component(paths, "kube-proxy")
    stop_component(paths, "kube-router")
    stop_pids(processes_naming(str(kube_router_kubeconfig(paths))))
    if (paths.bin_dir / "kube-proxy").exists():
        # kube-proxy's own way to remove its KUBE-* chains.
        sh(paths.bin_dir / "kube-proxy", "--cleanup", check=False)
    stop_component(paths, "containerd")
    stop_pids(processes_naming(str(paths.socket)))
    unmount_under(paths.kubelet_root, RUN_DIR / "containerd", paths.containerd_root)
    remove_kube_chains()  # kube-router's too: KUBE-ROUTER-*, KUBE-POD-FW-*, KUBE-NWPLCY-*
    remove_policy_sets()
    remove_cni_chains()
    remove_pod_chains()
    if sh("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        sh("ip", "link", "delete", BRIDGE, check=False)
    remove_kubelet_cgroups()
    saved = paths.config("ip_forward.saved")
    if saved.exists():
        Path("/proc/sys/net/ipv4/ip_forward").write_text(saved.read_text())
    shutil.rmtree(paths.dir, ignore_errors=True)
    shutil.rmtree(RUN_DIR / "containerd", ignore_errors=True)
    for socket_file in (paths.socket, Path(f"{paths.socket}.ttrpc"), paths.owner):
        socket_file.unlink(missing_ok=True)


#: The CNI firewall plugin's shared chains: this node's network has no firewall plugin, but
#: the machine's own CNI networks may (`buildah run`, podman), and they stay for those.
OTHER_CNI_CHAINS = frozenset({"CNI-FORWARD", "CNI-ADMIN"})


def leftovers(paths: NodePaths) -> list[str]:
    """What `down` should have removed and is still there (for the tests and `status`)."""
    found = [f"process {pid}" for pid in processes_naming(str(paths.socket))]
    found += [
        f"process {name}"
        for name, marker in (
            ("kubelet", paths.config("kubelet.json")),
            ("kube-proxy", paths.config("kube-proxy.json")),
            ("kube-router", kube_router_kubeconfig(paths)),
            (PROVISIONER, paths.provisioner_config),
        )
        for _ in processes_naming(str(marker))
    ]
    if paths.volumes.exists():
        found.append(f"volumes {paths.volumes}")
    found += [f"mount {m}" for m in mounts_under(paths.dir, RUN_DIR / "containerd")]
    if sh("ip", "link", "show", BRIDGE, check=False).returncode == 0:
        found.append(f"bridge {BRIDGE}")
    found += [
        f"{command} {table} chain {chain}"
        for command in IPTABLES
        for table in TABLES
        for chain in iptables_chains(table, command)
        if chain.startswith(("KUBE-", "CNI-")) and chain not in OTHER_CNI_CHAINS
    ]
    found += [f"ipset {name}" for name in policy_sets()]
    found += [f"cgroup {c}" for c in kubelet_cgroups_left()]
    return found
