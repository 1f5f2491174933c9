"""The child kinds table and the informer's cache, without a cluster.

That the chart's RBAC grants each row exactly its verbs is checked with the rendered chart
in tests/chart/test_chart_render.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

from tti_kube.client import KubeClient
from tti_operator.builders import Owner, desired_children, labels, owner_reference
from tti_operator.informer import ChildCache, Informer, Key
from tti_operator.kinds import (
    ADAPTER_CLAIM,
    ADAPTER_JOB,
    CHILD_KINDS,
    DEPLOYMENT,
    NETWORK_POLICY,
    POD,
    SERVICE,
    Drift,
    kind_of,
)
from tti_operator.settings import OperatorSettings
from tti_operator.spec import parse_spec

Obj = dict[str, Any]


def test_paths_come_from_the_row() -> None:
    assert DEPLOYMENT.collection_path(None) == "/apis/apps/v1/deployments"
    assert DEPLOYMENT.object_path("ns", "m") == "/apis/apps/v1/namespaces/ns/deployments/m"
    assert SERVICE.collection_path("ns") == "/api/v1/namespaces/ns/services"
    assert (DEPLOYMENT.group, POD.group) == ("apps", "")
    assert NETWORK_POLICY.object_path("ns", "m") == (
        "/apis/networking.k8s.io/v1/namespaces/ns/networkpolicies/m"
    )


def test_verbs_follow_what_the_operator_does_with_a_kind() -> None:
    assert DEPLOYMENT.verbs == {"list", "watch", "create", "patch"}
    assert POD.verbs == {"list", "watch"}
    # Garbage collection takes the children with their model; the operator deletes only a
    # NetworkPolicy, once told to make none, and what the adapters no longer need.
    deleted = [kind for kind in CHILD_KINDS if "delete" in kind.verbs]
    assert deleted == [NETWORK_POLICY, ADAPTER_CLAIM, ADAPTER_JOB]
    assert NETWORK_POLICY.verbs == {"list", "watch", "create", "patch", "delete"}


def test_every_built_child_has_a_row_that_applies_it() -> None:
    hub = {"huggingFace": {"repo": "org/lora", "file": "a.safetensors"}}
    spec = parse_spec({"model": "sdxl-turbo", "adapters": [{"name": "a", "source": hub}]})
    built = desired_children(Owner("m", "ns", "u"), spec, OperatorSettings(server_image="img"))
    for obj in built:
        kind = kind_of(obj)
        assert kind.applied and kind.drift is not Drift.NONE, kind.kind
    assert {kind_of(obj) for obj in built} == {k for k in CHILD_KINDS if k.applied}


def child(kind: str, name: str, model: str | None, uid: str, **meta: Any) -> Obj:
    metadata: Obj = {"name": name, "namespace": "ns", "uid": uid, **meta}
    if model is not None:
        metadata["labels"] = labels(model)
        metadata["ownerReferences"] = [owner_reference(Owner(model, "ns", f"owner-{model}"))]
    return {"kind": kind, "metadata": metadata}


class Recorder:
    def __init__(self) -> None:
        self.changed: list[Key] = []
        self.cache = ChildCache(self.changed.append)


def test_the_cache_keeps_identity_and_summary_and_tells_the_model() -> None:
    r = Recorder()
    r.cache.observe(DEPLOYMENT, "ADDED", child("Deployment", "m", "m", "d1", generation=3))
    [cached] = r.cache.children(DEPLOYMENT, ("ns", "m")).values()
    assert (cached.uid, cached.generation, cached.controller_uid) == ("d1", 3, "owner-m")
    assert cached.labelled and not cached.deleted
    assert r.cache.summaries(DEPLOYMENT, ("ns", "m"))[0].generation == 3  # type: ignore[attr-defined]
    assert r.changed == [("ns", "m")]


def test_a_deleted_child_the_operator_writes_stays_as_a_tombstone_until_forgotten() -> None:
    """So the reconciler tells "deleted" from "not seen yet"; pods just go."""
    r = Recorder()
    r.cache.observe(SERVICE, "ADDED", child("Service", "m", "m", "s1"))
    r.cache.observe(POD, "ADDED", child("Pod", "m-1", "m", "p1"))
    r.cache.observe(SERVICE, "DELETED", child("Service", "m", "m", "s1"))
    r.cache.observe(POD, "DELETED", child("Pod", "m-1", "m", "p1"))
    assert r.cache.children(SERVICE, ("ns", "m"))["m"].deleted
    assert r.cache.summaries(SERVICE, ("ns", "m")) == []
    assert r.cache.children(POD, ("ns", "m")) == {}
    r.cache.observe(SERVICE, "ADDED", child("Service", "m", "m", "s2"))  # recreated
    assert r.cache.children(SERVICE, ("ns", "m"))["m"].uid == "s2"
    assert list(r.cache.uids(SERVICE, "ns")) == ["s2"]
    r.cache.observe(SERVICE, "DELETED", child("Service", "m", "m", "s2"))
    r.cache.forget_deleted(("ns", "m"))
    assert r.cache.children(SERVICE, ("ns", "m")) == {}


def test_a_child_relabelled_away_from_its_model_is_gone_for_that_model() -> None:
    r = Recorder()
    r.cache.observe(DEPLOYMENT, "ADDED", child("Deployment", "m", "m", "d1"))
    r.cache.observe(DEPLOYMENT, "MODIFIED", child("Deployment", "m", None, "d1"))
    assert r.cache.children(DEPLOYMENT, ("ns", "m"))["m"].deleted
    assert r.changed[-1] == ("ns", "m")


class Listing(KubeClient):
    def __init__(self, items: list[Obj]) -> None:
        super().__init__("test")
        self.items = items

    async def list(self, path: str, params: dict[str, str]) -> Obj:
        return {"items": self.items, "metadata": {"resourceVersion": "42"}}


def test_a_relist_reports_children_deleted_while_not_watching() -> None:
    r = Recorder()
    r.cache.observe(DEPLOYMENT, "ADDED", child("Deployment", "kept", "kept", "d1"))
    r.cache.observe(DEPLOYMENT, "ADDED", child("Deployment", "gone", "gone", "d2"))
    r.cache.observe(DEPLOYMENT, "ADDED", child("Deployment", "other", "other", "d3",
                                               namespace="elsewhere"))  # fmt: skip
    informer = Informer(Listing([child("Deployment", "kept", "kept", "d1")]), ["ns"], r.cache)
    r.changed.clear()
    assert asyncio.run(informer.relist(DEPLOYMENT, "ns")) == "42"
    assert r.cache.children(DEPLOYMENT, ("ns", "gone"))["gone"].deleted
    assert not r.cache.children(DEPLOYMENT, ("ns", "kept"))["kept"].deleted
    assert not r.cache.children(DEPLOYMENT, ("elsewhere", "other"))["other"].deleted
    assert set(r.changed) == {("ns", "gone"), ("ns", "kept")}
