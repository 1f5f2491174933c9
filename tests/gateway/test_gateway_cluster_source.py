"""The cluster source without a cluster: reading models and EndpointSlices, and what a
listing (the first, or one after a broken watch) does to the table."""

from __future__ import annotations

from typing import Any

from tti_contracts.catalogue import CATALOGUE, request_rules
from tti_gateway.app import adapter_entry, model_entry
from tti_gateway.cluster import (
    ClusterSource,
    ModelSink,
    SliceSink,
    model_scale,
    slice_endpoints,
)
from tti_gateway.endpoints import EndpointTable, HoldPolicy
from tti_kube.client import KubeClient


def model(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace, "name": name}, "spec": spec}


def endpoint_slice(
    namespace: str, service: str, name: str, *endpoints: tuple[str, bool | None], port: int = 8080
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": namespace,
            "name": name,
            "labels": {"kubernetes.io/service-name": service},
        },
        "ports": [{"name": "grpc", "port": 8085}, {"name": "http", "port": port}],
        "endpoints": [
            {"addresses": [address], "conditions": {} if ready is None else {"ready": ready}}
            for address, ready in endpoints
        ],
    }


def source(*namespaces: str) -> ClusterSource:
    table = EndpointTable(HoldPolicy(timeout=1, max_held=1, retry_after=1))
    # The client is never called here: only waking a model would.
    return ClusterSource(table, KubeClient("test"), namespaces)


def test_a_slice_gives_its_http_port_on_each_address_and_its_readiness() -> None:
    found = slice_endpoints(
        endpoint_slice("ns", "m", "m-1", ("10.0.0.1", True), ("10.0.0.2", False), ("fd00::3", None))
    )
    # An unset condition counts as ready, as the EndpointSlice API asks of consumers.
    assert found == {
        "http://10.0.0.1:8080": True,
        "http://10.0.0.2:8080": False,
        "http://[fd00::3]:8080": True,
    }
    no_http = endpoint_slice("ns", "m", "m-1", ("10.0.0.1", True))
    no_http["ports"] = [{"name": "grpc", "port": 8085}]
    assert slice_endpoints(no_http) == {}


def test_a_models_scale_reads_replicas_and_whether_it_autoscales() -> None:
    assert model_scale(model("ns", "m")).replicas == 1  # the CRD's default
    scale = model_scale(model("ns", "m", replicas=0, autoscaling={"maxReplicas": 2}))
    assert (scale.replicas, scale.autoscaling) == (0, True)
    assert not model_scale(model("ns", "m", replicas=0)).autoscaling


def test_a_models_rules_are_its_catalogue_entrys_and_reach_the_table() -> None:
    """The playground rounds sizes and bounds its steps and guidance as the model will: the
    catalogue's rules for spec.model."""
    assert model_scale(model("ns", "m", model="sdxl-turbo")).rules == request_rules(
        CATALOGUE["sdxl-turbo"]
    )
    assert model_scale(model("ns", "m", model="from-a-newer-crd")).rules is None
    s = source("ns")
    ModelSink(s, "ns").listed([model("ns", "turbo", model="sdxl-turbo")])
    listed = model_entry(s.table.models[("ns", "turbo")], "turbo")  # in GET /v1/models
    assert (listed["id"], listed["side_multiple"]) == ("turbo", 8)
    ModelSink(s, "ns").event("MODIFIED", model("ns", "turbo", model="flux.1-dev"))
    listed = model_entry(s.table.models[("ns", "turbo")], "turbo")
    assert listed["side_multiple"] == 16
    assert listed["rules"] == request_rules(CATALOGUE["flux.1-dev"])


def test_a_models_adapters_reach_the_table_and_are_listed_with_their_parent() -> None:
    adapters = [{"name": "pixel", "source": {"hostPath": {"path": "/x"}}}, {"name": "ink"}]
    assert model_scale(model("ns", "m", adapters=adapters)).adapters == ("pixel", "ink")
    assert model_scale(model("ns", "m", adapters="not a list")).adapters == ()
    s = source("ns")
    ModelSink(s, "ns").listed([model("ns", "sdxl", model="sdxl", adapters=adapters)])
    sdxl = s.table.models[("ns", "sdxl")]
    assert sdxl.adapters == ("pixel", "ink")
    listed = adapter_entry(sdxl, "sdxl", "pixel")  # in GET /v1/models
    assert (listed["id"], listed["parent"], listed["rules"]) == (
        "sdxl/pixel",
        "sdxl",
        request_rules(CATALOGUE["sdxl"]),
    )
    ModelSink(s, "ns").event("MODIFIED", model("ns", "sdxl", model="sdxl"))
    assert sdxl.adapters == ()


def test_slices_of_a_model_merge_and_a_model_gets_those_seen_before_it() -> None:
    s = source("ns")
    slices = SliceSink(s, "ns")
    slices.event("ADDED", endpoint_slice("ns", "m", "m-1", ("10.0.0.1", False)))
    slices.event("ADDED", endpoint_slice("ns", "m", "m-2", ("10.0.0.1", True), ("10.0.0.2", False)))
    ModelSink(s, "ns").event("ADDED", model("ns", "m"))
    endpoints = s.table.models[("ns", "m")].endpoints
    assert {url: e.ready for url, e in endpoints.items()} == {
        "http://10.0.0.1:8080": True,
        "http://10.0.0.2:8080": False,
    }
    slices.event("DELETED", endpoint_slice("ns", "m", "m-2"))
    endpoints = s.table.models[("ns", "m")].endpoints
    assert {url: e.ready for url, e in endpoints.items()} == {"http://10.0.0.1:8080": False}


def test_a_listing_removes_what_vanished_in_its_own_namespace_only() -> None:
    s = source("a", "b")
    for namespace in ("a", "b"):
        ModelSink(s, namespace).listed([model(namespace, "x"), model(namespace, "y")])
        SliceSink(s, namespace).listed([endpoint_slice(namespace, "x", "x-1", ("10.0.0.1", True))])
    # A watch of namespace a broke; meanwhile y and x's slice went away there.
    ModelSink(s, "a").listed([model("a", "x")])
    SliceSink(s, "a").listed([])
    assert sorted(s.table.models) == [("a", "x"), ("b", "x"), ("b", "y")]
    assert s.table.models[("a", "x")].endpoints == {}
    assert list(s.table.models[("b", "x")].endpoints) == ["http://10.0.0.1:8080"]
