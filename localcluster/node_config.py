"""The real node's configuration, as data: its addresses and names, where it keeps its files,
and what containerd, the CNI plugins, the kubelet, kube-proxy, kube-router's policy engine,
CoreDNS, the local-path provisioner and kwokctl's control plane are configured with. Pure
builders, no process and no
root: `node.py` writes these out and runs the components; the tests read them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster import images

HERE = Path(__file__).resolve().parent

NODE_NAME = "tti-node"
BRIDGE = "tti0"
NODE_IP = "10.244.0.1"
POD_CIDR = "10.244.0.0/16"
# The API server's default Service range (kwokctl sets none): `kubernetes` is its first address.
SERVICE_CIDR = "10.0.0.0/24"
SERVICE_IP = "10.0.0.1"
DNS_IP = "10.0.0.10"
CLUSTER_DOMAIN = "cluster.local"
NODE_LABEL = "tti.dev/real-node"
# Sockets and runtime state: short paths (a unix socket path has 108 bytes), gone at reboot.
RUN_DIR = Path("/run/tti-operator")
CNI_BIN_DIR = Path("/usr/lib/cni")
CNI_NETWORK = "tti-pods"
# Where pods on the node reach a process on this machine: the bridge's own address, their
# gateway. A process serving them listens there (the bridge exists while the node is up) or on
# 0.0.0.0.
HOST_ADDRESS = NODE_IP

# Dynamic PersistentVolumes: Rancher's local-path-provisioner, a process beside the kubelet.
# Its default name, so that its documentation applies as written.
PROVISIONER_NAME = "rancher.io/local-path"
PROVISIONER_NAMESPACE = "local-path-storage"
# Holds the helper pods' setup and teardown scripts (the provisioner mounts it into them).
PROVISIONER_CONFIGMAP = "local-path-config"
HELPER_SERVICE_ACCOUNT = "local-path-helper"
# The helper pods need a shell, mkdir and rm, and no registry is reachable: the Debian base the
# project's images are built on has them, and does not change with the project's code.
HELPER_IMAGE = images.BASE_IMAGE
# The cluster's default class: a directory on the node, bound where the first pod using the
# claim is scheduled (ReadWriteOnce, as a local disk).
STORAGE_CLASS = "local-path"
# A directory every node of this one-machine cluster shares, standing in for a network
# filesystem: bound at once, no node affinity, ReadWriteMany allowed, so pods on kwok's GPU
# nodes can claim it too (they mount nothing; pods on the real node mount the directory).
SHARED_STORAGE_CLASS = "local-path-shared"
DEFAULT_CLASS_ANNOTATION = "storageclass.kubernetes.io/is-default-class"


class NodeError(Exception):
    """A failure the user can act on; printed as one line."""


def pinned(name: str) -> str:
    for line in (HERE / "versions.env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1].strip()
    raise NodeError(f"versions.env has no {name}")


def node_images() -> tuple[images.BinaryImage, ...]:
    return (
        images.BinaryImage(f"localhost/pause:{pinned('PAUSE_VERSION')}", "pause", ("/pause",)),
        images.BinaryImage(
            f"localhost/coredns:{pinned('COREDNS_VERSION')}", "coredns", ("/coredns",)
        ),
    )


@dataclass(frozen=True)
class NodePaths:
    """Where the node keeps its configuration, state and logs."""

    state_dir: Path  # the cluster's state folder
    bin_dir: Path

    @property
    def dir(self) -> Path:
        return self.state_dir / "node"

    @property
    def logs(self) -> Path:
        return self.dir / "logs"

    @property
    def pids(self) -> Path:
        return self.dir / "pids"

    @property
    def kubelet_root(self) -> Path:
        return self.dir / "kubelet"

    @property
    def cni_conf_dir(self) -> Path:
        return self.dir / "cni"

    @property
    def cni_ipam_dir(self) -> Path:
        return self.dir / "ipam"

    @property
    def containerd_root(self) -> Path:
        return images.cache_root() / "containerd"

    @property
    def socket(self) -> Path:
        return RUN_DIR / "containerd.sock"

    @property
    def owner(self) -> Path:
        """Which cluster's node runs now: there is one containerd store per machine."""
        return RUN_DIR / "owner"

    @property
    def volumes(self) -> Path:
        """The PersistentVolumes' directories: the node's state, removed by `down`."""
        return self.dir / "volumes"

    @property
    def node_volumes(self) -> Path:
        return self.volumes / "node"

    @property
    def shared_volumes(self) -> Path:
        return self.volumes / "shared"

    @property
    def provisioner_config(self) -> Path:
        """The local-path provisioner's config.json (its name also marks its process)."""
        return self.dir / "local-path-config.json"

    @property
    def helper_pod_template(self) -> Path:
        return self.dir / "local-path-helper-pod.json"

    def config(self, name: str) -> Path:
        return self.dir / name

    def ctr(self) -> list[str]:
        return ["ctr", "--address", str(self.socket), "--namespace", "k8s.io"]

    def crictl(self) -> list[str]:
        return [str(self.bin_dir / "crictl"), "--runtime-endpoint", f"unix://{self.socket}"]


# --- pure builders ------------------------------------------------------------------------


def containerd_config(paths: NodePaths) -> str:
    """containerd 1.6's configuration (TOML, version 2), as the kubelet's CRI runtime."""
    pause = node_images()[0].ref
    return f"""version = 2
root = "{paths.containerd_root}"
state = "{RUN_DIR / "containerd"}"
disabled_plugins = ["io.containerd.internal.v1.opt", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "{paths.socket}"
[ttrpc]
  address = "{paths.socket}.ttrpc"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  # This host refuses writes to oom_score_adj (no CAP_SYS_RESOURCE): without this every
  # sandbox fails with runc's "can't get final child's PID from pipe".
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{CNI_BIN_DIR}"
    conf_dir = "{paths.cni_conf_dir}"
"""


def cni_conflist(paths: NodePaths) -> dict[str, Any]:
    """One bridge network for the node's pods, with host ports and hairpin traffic."""
    return {
        "cniVersion": "0.4.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": True,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "dataDir": str(paths.cni_ipam_dir),
                    "ranges": [[{"subnet": POD_CIDR, "gateway": NODE_IP}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                },
            },
            {"type": "portmap", "capabilities": {"portMappings": True}},
            {"type": "loopback"},
        ],
    }


def kubelet_config(
    paths: NodePaths, kwok_pki: Path, port: int, healthz_port: int
) -> dict[str, Any]:
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": NODE_IP,
        "port": port,
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        # The API server presents the cluster's admin certificate (logs, exec, port-forward).
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": False},
            "x509": {"clientCAFile": str(kwok_pki / "ca.crt")},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{paths.socket}",
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "clusterDNS": [DNS_IP],
        "clusterDomain": CLUSTER_DOMAIN,
        "resolvConf": "/etc/resolv.conf",
        "serializeImagePulls": False,
        # Images here cannot be pulled again: never collect them, never evict for disk.
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
        },
        "maxPods": 110,
        "nodeStatusReportFrequency": "10s",
    }


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> dict[str, Any]:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": POD_CIDR,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        # NodePorts on the node's bridge address only, not on this machine's other interfaces.
        "nodePortAddresses": [f"{NODE_IP}/32"],
        "iptables": {"localhostNodePorts": False},
        # The host's conntrack sysctls are not ours to change.
        "conntrack": {"maxPerCore": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
    }


#: The ipsets kube-router's network-policy controller makes (its pods' and peers' addresses).
POLICY_SET_PREFIXES = ("KUBE-SRC-", "KUBE-DST-")


def kube_router_args(paths: NodePaths, kubeconfig: Path) -> list[str]:
    """kube-router as the node's NetworkPolicy engine and nothing else: its firewall (the
    policies as iptables chains and ipsets for this node's pods), not its BGP routing (one
    node, one bridge) nor its IPVS service proxy (kube-proxy serves Services)."""
    return [
        str(paths.bin_dir / "kube-router"),
        f"--kubeconfig={kubeconfig}",
        # The node whose pods it guards: theirs are the pods with this node's InternalIP.
        f"--hostname-override={NODE_NAME}",
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--enable-ipv6=false",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        # Its health server would listen on every address; readiness is its chains instead.
        "--health-port=0",
        "--metrics-port=0",
        "--v=1",
    ]


def coredns_objects() -> list[dict[str, Any]]:
    """CoreDNS as a Deployment behind the kube-dns Service, as clusters run it."""
    name, namespace = "coredns", "kube-system"
    labels = {"k8s-app": "kube-dns"}
    corefile = f""".:1053 {{
    errors
    health :8080
    ready :8181
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
    forward . /etc/resolv.conf
    cache 30
    loop
    loadbalance
}}
"""
    rules = [
        {
            "apiGroups": [""],
            "resources": ["endpoints", "services", "pods", "namespaces"],
            "verbs": ["list", "watch"],
        },
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["list", "watch"],
        },
    ]
    meta = {"name": name, "namespace": namespace, "labels": labels}
    container = {
        "name": "coredns",
        "image": node_images()[1].ref,
        "imagePullPolicy": "Never",
        "args": ["-conf", "/etc/coredns/Corefile"],
        "ports": [
            {"name": "dns", "containerPort": 1053, "protocol": "UDP"},
            {"name": "dns-tcp", "containerPort": 1053, "protocol": "TCP"},
        ],
        "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "128Mi"}},
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "periodSeconds": 10},
        "securityContext": {
            "runAsNonRoot": True,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "config", "mountPath": "/etc/coredns", "readOnly": True}],
    }
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "system:coredns"},
            "rules": rules,
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "system:coredns"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:coredns",
            },
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": corefile}},
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": meta,
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {
                        "serviceAccountName": name,
                        "dnsPolicy": "Default",
                        "priorityClassName": "system-cluster-critical",
                        "nodeSelector": {NODE_LABEL: "true"},
                        "containers": [container],
                        "volumes": [{"name": "config", "configMap": {"name": name}}],
                    },
                },
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": namespace, "labels": labels},
            "spec": {
                "clusterIP": DNS_IP,
                "selector": labels,
                "ports": [
                    {"name": "dns", "port": 53, "targetPort": 1053, "protocol": "UDP"},
                    {"name": "dns-tcp", "port": 53, "targetPort": 1053, "protocol": "TCP"},
                ],
            },
        },
    ]


def component_patches(kwok_pki: Path) -> list[dict[str, Any]]:
    """kwokctl component patches: the API server where pods reach it, and able to reach the
    kubelet (logs, exec) with a client certificate."""

    def arg(key: str, value: str, override: bool = False) -> dict[str, Any]:
        return {"key": key, "value": value, "override": override}

    return [
        {
            "name": "kube-apiserver",
            "extraArgs": [
                # Every address, as kubeadm's API servers listen: loopback for the control
                # plane (kwokctl's kubeconfigs), the node's bridge address for pods.
                arg("bind-address", "0.0.0.0", override=True),
                arg("advertise-address", NODE_IP),
                arg("service-cluster-ip-range", SERVICE_CIDR),
                arg("kubelet-client-certificate", str(kwok_pki / "admin.crt")),
                arg("kubelet-client-key", str(kwok_pki / "admin.key")),
                arg("kubelet-preferred-address-types", "InternalIP"),
            ],
        },
        {
            "name": "kwok-controller",
            "extraArgs": [
                arg("manage-all-nodes", "false", override=True),
                arg("manage-nodes-with-annotation-selector", "kwok.x-k8s.io/node=fake"),
            ],
        },
    ]


def apiserver_cert_sans() -> list[str]:
    return [
        SERVICE_IP,
        NODE_IP,
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        f"kubernetes.default.svc.{CLUSTER_DOMAIN}",
    ]


# --- the local-path provisioner -----------------------------------------------------------

# As upstream's deployment has them; VOL_DIR is the volume's directory as the helper pod sees
# it (the provisioner mounts its parent at the same path). 0777: pods write as any user.
HELPER_SCRIPTS = {
    "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
    "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
}


def local_path_config(paths: NodePaths) -> dict[str, Any]:
    """The provisioner's config.json: where each class puts its volumes. The default class has
    a directory on the real node only; a claim whose first pod lands on one of kwok's nodes
    fails to provision, naming the node (no container could use the directory there)."""
    return {
        "storageClassConfigs": {
            STORAGE_CLASS: {
                "nodePathMap": [{"node": NODE_NAME, "paths": [str(paths.node_volumes)]}]
            },
            SHARED_STORAGE_CLASS: {"sharedFileSystemPath": str(paths.shared_volumes)},
        },
        "cmdTimeoutSeconds": 120,
    }


def local_path_helper_pod() -> dict[str, Any]:
    """The template of the pods that create and remove a volume's directory. The provisioner
    adds the command, the hostPath of the directory's parent, the scripts, the node."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "helper-pod"},
        "spec": {
            "priorityClassName": "system-node-critical",
            # The shared class's helpers are scheduled (they name no node): the real node's.
            "nodeSelector": {NODE_LABEL: "true"},
            "automountServiceAccountToken": False,
            "tolerations": [
                {
                    "key": "node.kubernetes.io/disk-pressure",
                    "operator": "Exists",
                    "effect": "NoSchedule",
                }
            ],
            "containers": [
                {
                    # The provisioner asks the logs of a container of this name.
                    "name": "helper-pod",
                    "image": HELPER_IMAGE,
                    "imagePullPolicy": "Never",
                    "resources": {
                        "requests": {"cpu": "10m", "memory": "16Mi"},
                        "limits": {"memory": "64Mi"},
                    },
                }
            ],
        },
    }


def storage_class(name: str, binding_mode: str, *, default: bool = False) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if default:
        metadata["annotations"] = {DEFAULT_CLASS_ANNOTATION: "true"}
    return {
        "apiVersion": "storage.k8s.io/v1",
        "kind": "StorageClass",
        "metadata": metadata,
        "provisioner": PROVISIONER_NAME,
        "volumeBindingMode": binding_mode,
        "reclaimPolicy": "Delete",
    }


def local_path_objects() -> list[dict[str, Any]]:
    """What the provisioner needs in the cluster: its namespace, where the helper pods run
    with their scripts and service account, and the storage classes it serves."""
    namespace = PROVISIONER_NAMESPACE
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": HELPER_SERVICE_ACCOUNT, "namespace": namespace},
            "automountServiceAccountToken": False,
        },
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": PROVISIONER_CONFIGMAP, "namespace": namespace},
            "data": HELPER_SCRIPTS,
        },
        storage_class(STORAGE_CLASS, "WaitForFirstConsumer", default=True),
        storage_class(SHARED_STORAGE_CLASS, "Immediate"),
    ]


def local_path_provisioner_args(paths: NodePaths, kubeconfig: Path) -> list[str]:
    """Out of the cluster, with the cluster's kubeconfig (as the kubelet runs); its config and
    helper pod template from files (written from the builders above), its scripts from the
    ConfigMap. No leader election: one provisioner per cluster."""
    return [
        str(paths.bin_dir / "local-path-provisioner"),
        "start",
        f"--kubeconfig={kubeconfig}",
        f"--config={paths.provisioner_config}",
        f"--helper-pod-file={paths.helper_pod_template}",
        f"--provisioner-name={PROVISIONER_NAME}",
        f"--namespace={PROVISIONER_NAMESPACE}",
        f"--configmap-name={PROVISIONER_CONFIGMAP}",
        f"--service-account-name={HELPER_SERVICE_ACCOUNT}",
        # Unused by v0.0.30 (the template names the image) but required.
        f"--helper-image={HELPER_IMAGE}",
    ]
