"""The real node's configuration, read as data (no process, no root): the components agree on
the node's addresses, its socket and its images, and each file parses as its component reads it.
"""

from __future__ import annotations

import ipaddress
import re
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
