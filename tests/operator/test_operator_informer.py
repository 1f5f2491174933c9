"""The lean child watches against the real API server: list, follow, relist, selectors."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import kopf
import pytest
from support.cluster import Cluster

from tti_kube.client import KubeClient
from tti_operator.builders import MODEL_LABEL
from tti_operator.informer import ChildCache, Informer, Key
from tti_operator.kinds import DEPLOYMENT, POD
from tti_operator.ownership import MANAGED_BY

pytestmark = [pytest.mark.cluster]

#: The models told of a change, in order.
Seen = list[Key]


def child(kind: str, name: str, model: str | None) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY}
    if model is not None:
        labels[MODEL_LABEL] = model
    if kind == "Pod":
        spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
                "spec": spec}  # fmt: skip
    template = {"metadata": {"labels": {"x": name}}, "spec": {"containers": [{"name": "c",
                "image": "busybox"}]}}  # fmt: skip
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"x": name}}, "template": template},
    }


async def connected(cluster: Cluster) -> KubeClient:
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
    assert info is not None
    client = KubeClient("tti-operator-test")
    await client.connect(info)
    return client


async def until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    for _ in range(int(timeout * 10)):
        if condition():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def watching(cluster: Cluster, namespace: str) -> AsyncIterator[tuple[Informer, Seen]]:
    """An informer of `namespace`, not started yet, recording which models it tells of."""
    seen: Seen = []
    client = await connected(cluster)
    informer = Informer(client, [namespace], ChildCache(seen.append))
    try:
        yield informer, seen
    finally:
        await informer.close()
        await client.close()


def apply(cluster: Cluster, namespace: str, *objects: dict[str, Any]) -> None:
    items = {"apiVersion": "v1", "kind": "List", "items": list(objects)}
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(items))


def test_lists_existing_children_then_follows_changes_and_deletions(
    cluster: Cluster, kube_namespace: str
) -> None:
    key = (kube_namespace, "m")
    apply(cluster, kube_namespace, child("Deployment", "m", "m"))

    async def scenario() -> None:
        async with watching(cluster, kube_namespace) as (informer, seen):
            cache = informer.cache
            informer.start()
            await asyncio.wait_for(informer.synced(kube_namespace), 30)
            assert key in seen  # the initial listing
            assert [c.generation for c in cache.children(DEPLOYMENT, key).values()] == [1]
            assert cache.children(POD, key) == {}

            apply(cluster, kube_namespace, child("Pod", "m-pod", "m"))
            await until(lambda: "m-pod" in cache.children(POD, key), "the pod's summary")
            assert cache.summaries(POD, key)[0].name == "m-pod"  # type: ignore[attr-defined]

            seen.clear()
            cluster.kubectl("delete", "pod", "m-pod", "-n", kube_namespace, "--grace-period=0",
                        "--force", "--wait=false")  # fmt: skip
            await until(lambda: cache.children(POD, key) == {}, "the pod's deletion")
            assert key in seen

            cluster.kubectl("delete", "deployment", "m", "-n", kube_namespace, "--wait=false")
            await until(lambda: cache.children(DEPLOYMENT, key)["m"].deleted, "a tombstone")

    asyncio.run(scenario())


def test_children_without_the_model_label_are_never_seen(
    cluster: Cluster, kube_namespace: str
) -> None:
    apply(cluster, kube_namespace, child("Deployment", "stray", None))

    async def scenario() -> None:
        async with watching(cluster, kube_namespace) as (informer, seen):
            informer.start()
            await asyncio.wait_for(informer.synced(kube_namespace), 30)
            apply(cluster, kube_namespace, child("Deployment", "ours", "ours"))
            ours = (kube_namespace, "ours")
            await until(lambda: bool(informer.cache.children(DEPLOYMENT, ours)), "ours")
            assert seen and all(key == ours for key in seen)
            assert list(informer.cache.uids(DEPLOYMENT, kube_namespace)) == [
                child.uid for child in informer.cache.children(DEPLOYMENT, ours).values()
            ]

    asyncio.run(scenario())


def test_a_relist_reports_children_deleted_while_not_watching(
    cluster: Cluster, kube_namespace: str
) -> None:
    """What happens after "410 Gone" or a broken watch: the list is the truth."""
    apply(cluster, kube_namespace, child("Deployment", "kept", "kept"))
    apply(cluster, kube_namespace, child("Deployment", "gone", "gone"))

    async def scenario() -> None:
        async with watching(cluster, kube_namespace) as (informer, seen):
            cache, gone = informer.cache, (kube_namespace, "gone")
            await informer.relist(DEPLOYMENT, kube_namespace)
            assert not cache.children(DEPLOYMENT, gone)["gone"].deleted
            cluster.kubectl("delete", "deployment", "gone", "-n", kube_namespace)
            seen.clear()
            version = await informer.relist(DEPLOYMENT, kube_namespace)
            assert cache.children(DEPLOYMENT, gone)["gone"].deleted
            assert not cache.children(DEPLOYMENT, (kube_namespace, "kept"))["kept"].deleted
            assert set(seen) == {gone, (kube_namespace, "kept")}
            assert version.isdigit()

    asyncio.run(scenario())
