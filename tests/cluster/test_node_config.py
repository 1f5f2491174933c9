"""The real node's configuration, read as data (no process, no root): the components agree on
the node's addresses, its socket and its images, and each file parses as its component reads it.
"""

from __future__ import annotations

import ipaddress
import re
import stat
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import pytest

from localcluster import node_config, util
from localcluster.node_config import NodePaths


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> NodePaths:
    monkeypatch.setenv("TTI_CACHE_DIR", str(tmp_path / "cache"))
    return NodePaths(state_dir=tmp_path / "state", bin_dir=tmp_path / "bin")


def coredns(kind: str) -> dict[str, Any]:
    [found] = [o for o in node_config.coredns_objects() if o["kind"] == kind]
    return found


def test_the_node_address_is_the_pod_network_gateway(paths: NodePaths) -> None:
    pods = ipaddress.ip_network(node_config.POD_CIDR)
    [bridge, *_] = node_config.cni_conflist(paths)["plugins"]
    [[pod_range]] = bridge["ipam"]["ranges"]

    assert ipaddress.ip_address(node_config.NODE_IP) in pods
    assert pod_range == {"subnet": node_config.POD_CIDR, "gateway": node_config.NODE_IP}
    assert bridge["bridge"] == node_config.BRIDGE
    assert node_config.kubelet_config(paths, Path("/pki"), 1, 2)["address"] == node_config.NODE_IP


def test_the_api_server_certificate_names_its_service_address() -> None:
    services = ipaddress.ip_network(node_config.SERVICE_CIDR)

    # The `kubernetes` Service takes the range's first address.
    assert ipaddress.ip_address(node_config.SERVICE_IP) == next(services.hosts())
    assert {node_config.SERVICE_IP, node_config.NODE_IP} <= set(node_config.apiserver_cert_sans())


def test_the_kubelet_resolves_names_at_the_coredns_service(paths: NodePaths) -> None:
    kubelet = node_config.kubelet_config(paths, Path("/pki"), 10250, 10248)
    service = coredns("Service")

    assert kubelet["clusterDNS"] == [node_config.DNS_IP] == [service["spec"]["clusterIP"]]
    assert ipaddress.ip_address(node_config.DNS_IP) in ipaddress.ip_network(
        node_config.SERVICE_CIDR
    )
    assert coredns("Deployment")["spec"]["template"]["spec"]["nodeSelector"] == {
        node_config.NODE_LABEL: "true"
    }


def test_containerd_serves_the_socket_the_kubelet_and_ctr_use(paths: NodePaths) -> None:
    config = tomllib.loads(node_config.containerd_config(paths))
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]

    assert config["grpc"]["address"] == str(paths.socket)
    assert node_config.kubelet_config(paths, Path("/pki"), 1, 2)["containerRuntimeEndpoint"] == (
        f"unix://{paths.socket}"
    )
    assert str(paths.socket) in paths.ctr() and f"unix://{paths.socket}" in paths.crictl()
    assert cri["cni"]["conf_dir"] == str(paths.cni_conf_dir)
    assert cri["sandbox_image"] == node_config.node_images()[0].ref


def test_the_node_images_carry_the_pinned_versions() -> None:
    pause, dns = node_config.node_images()

    assert pause.ref == f"localhost/pause:{node_config.pinned('PAUSE_VERSION')}"
    assert dns.ref == f"localhost/coredns:{node_config.pinned('COREDNS_VERSION')}"
    assert coredns("Deployment")["spec"]["template"]["spec"]["containers"][0]["image"] == dns.ref


def test_a_version_versions_env_lacks_is_a_clear_error() -> None:
    with pytest.raises(node_config.NodeError, match=r"versions\.env has no NO_SUCH_VERSION"):
        node_config.pinned("NO_SUCH_VERSION")


def test_kube_proxy_serves_node_ports_on_the_node_address_only() -> None:
    config = node_config.kube_proxy_config(Path("/kubeconfig"), 10256, 10249)

    assert config["nodePortAddresses"] == [f"{node_config.NODE_IP}/32"]
    assert config["hostnameOverride"] == node_config.NODE_NAME
    assert config["healthzBindAddress"] == "127.0.0.1:10256"
    assert config["metricsBindAddress"] == "127.0.0.1:10249"


def test_kube_router_runs_its_policy_firewall_alone_for_this_node(paths: NodePaths) -> None:
    argv = node_config.kube_router_args(paths, Path("/kr.kubeconfig"))
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in argv[1:])
    assert argv[0] == str(paths.bin_dir / "kube-router")
    # The firewall only: no BGP routes, no IPVS proxy (kube-proxy serves the Services).
    assert (flags["run-firewall"], flags["run-router"], flags["run-service-proxy"]) == (
        "true",
        "false",
        "false",
    )
    assert flags["hostname-override"] == node_config.NODE_NAME
    assert flags["kubeconfig"] == "/kr.kubeconfig"
    assert flags["service-cluster-ip-range"] == node_config.SERVICE_CIDR
    assert (flags["health-port"], flags["metrics-port"]) == ("0", "0")  # no open socket


def test_the_control_plane_advertises_the_node_address_and_leaves_the_node_to_its_kubelet() -> None:
    patches = {p["name"]: p["extraArgs"] for p in node_config.component_patches(Path("/pki"))}
    apiserver = {a["key"]: a["value"] for a in patches["kube-apiserver"]}
    kwok = {a["key"]: a["value"] for a in patches["kwok-controller"]}

    assert apiserver["advertise-address"] == node_config.NODE_IP
    assert apiserver["service-cluster-ip-range"] == node_config.SERVICE_CIDR
    assert apiserver["kubelet-client-certificate"] == "/pki/admin.crt"
    assert kwok["manage-all-nodes"] == "false"


def test_free_ports_are_distinct() -> None:
    ports = util.free_ports(5)

    assert len(set(ports)) == 5
    assert all(0 < port < 65536 for port in ports)


class Refused(Exception):
    pass


def test_wait_for_raises_the_callers_error_naming_the_log(tmp_path: Path) -> None:
    log_file = tmp_path / "component.log"

    with pytest.raises(Refused, match=re.escape(f"waiting for the component; see {log_file}")):
        util.wait_for("the component", lambda: False, 0, Refused, log_file)


def test_wait_for_returns_once_the_probe_holds() -> None:
    answers = iter([False, False, True])

    util.wait_for("the third answer", lambda: next(answers), 60, Refused)

    assert next(answers, None) is None


# --- the local-path provisioner ------------------------------------------------------------


def storage_classes() -> dict[str, dict[str, Any]]:
    return {
        o["metadata"]["name"]: o
        for o in node_config.local_path_objects()
        if o["kind"] == "StorageClass"
    }


def flags(paths: NodePaths) -> dict[str, str]:
    args = node_config.local_path_provisioner_args(paths, Path("/kubeconfig"))
    return dict(arg.removeprefix("--").split("=", 1) for arg in args if arg.startswith("--"))


def test_the_default_class_binds_where_the_first_pod_runs_and_deletes_its_volume() -> None:
    default = storage_classes()[node_config.STORAGE_CLASS]

    assert default["metadata"]["annotations"] == {
        "storageclass.kubernetes.io/is-default-class": "true"
    }
    assert default["volumeBindingMode"] == "WaitForFirstConsumer"
    assert default["reclaimPolicy"] == "Delete"
    others = [c for name, c in storage_classes().items() if name != node_config.STORAGE_CLASS]
    assert others and all("annotations" not in c["metadata"] for c in others), "one default"


def test_every_class_is_the_provisioners_and_configured_in_it(paths: NodePaths) -> None:
    configured = node_config.local_path_config(paths)["storageClassConfigs"]

    assert {c["provisioner"] for c in storage_classes().values()} == {
        flags(paths)["provisioner-name"]
    }
    # With per-class configs, the provisioner refuses a class it has none for.
    assert set(configured) == set(storage_classes())


def test_volumes_live_in_the_node_folder_that_down_removes(paths: NodePaths) -> None:
    configured = node_config.local_path_config(paths)["storageClassConfigs"]
    [node_paths] = configured[node_config.STORAGE_CLASS]["nodePathMap"]
    shared = configured[node_config.SHARED_STORAGE_CLASS]["sharedFileSystemPath"]

    # Only the real node: no container could use a directory made for one of kwok's.
    assert node_paths == {"node": node_config.NODE_NAME, "paths": [str(paths.node_volumes)]}
    for path in (Path(node_paths["paths"][0]), Path(shared)):
        assert path.is_absolute() and path.is_relative_to(paths.dir)
    assert storage_classes()[node_config.SHARED_STORAGE_CLASS]["volumeBindingMode"] == ("Immediate")


def test_the_provisioner_reads_the_files_and_objects_the_node_writes(paths: NodePaths) -> None:
    given = flags(paths)
    objects = {(o["kind"], o["metadata"]["name"]) for o in node_config.local_path_objects()}

    assert given["kubeconfig"] == "/kubeconfig"
    assert given["config"] == str(paths.provisioner_config)
    # Read as a file only when the name ends in .json (else as the config's text).
    assert given["config"].endswith(".json")
    assert given["helper-pod-file"] == str(paths.helper_pod_template)
    assert ("Namespace", given["namespace"]) in objects
    assert ("ConfigMap", given["configmap-name"]) in objects
    assert ("ServiceAccount", given["service-account-name"]) in objects
    configmap = next(o for o in node_config.local_path_objects() if o["kind"] == "ConfigMap")
    assert configmap["metadata"]["namespace"] == given["namespace"]
    assert set(configmap["data"]) == {"setup", "teardown"}


def test_helper_pods_run_the_local_base_image_on_the_real_node() -> None:
    spec = node_config.local_path_helper_pod()["spec"]
    [container] = spec["containers"]

    assert container["name"] == "helper-pod"
    assert container["image"] == node_config.HELPER_IMAGE == node_config.images.BASE_IMAGE
    assert container["imagePullPolicy"] == "Never"
    assert spec["nodeSelector"] == {node_config.NODE_LABEL: "true"}
    assert spec["automountServiceAccountToken"] is False


def test_the_helper_scripts_make_a_directory_anyone_writes_and_remove_it(tmp_path: Path) -> None:
    volume = tmp_path / "pvc-1_ns_claim"

    def run(script: str) -> None:
        source = tmp_path / script
        source.write_text(node_config.HELPER_SCRIPTS[script])
        subprocess.run(["sh", str(source)], env={"VOL_DIR": str(volume)}, check=True)

    run("setup")
    assert volume.is_dir() and stat.S_IMODE(volume.stat().st_mode) == 0o777
    (volume / "model").mkdir()
    (volume / "model" / "weights.safetensors").write_bytes(b"\0" * 16)

    run("teardown")
    assert not volume.exists()
    assert tmp_path.is_dir()


def test_pods_reach_this_machine_at_their_gateway(paths: NodePaths) -> None:
    [bridge, *_] = node_config.cni_conflist(paths)["plugins"]
    [[pod_range]] = bridge["ipam"]["ranges"]

    assert pod_range["gateway"] == node_config.HOST_ADDRESS
