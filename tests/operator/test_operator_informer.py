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

from tti_operator.builders import MANAGED_BY, MODEL_LABEL
from tti_operator.informer import CHILD_SELECTOR, DEPLOYMENTS, Children
from tti_operator.kube import KubeClient

pytestmark = [pytest.mark.cluster]

Seen = list[tuple[str, str | None, str]]


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
async def watching(cluster: Cluster, namespace: str) -> AsyncIterator[tuple[Children, Seen]]:
    """Children of `namespace`, not started yet, recording what reaches the reconciler."""
    seen: Seen = []

    async def dispatch(
        kind: str, _key: tuple[str, str], event_type: str | None, obj: dict[str, Any]
    ) -> None:
        seen.append((kind, event_type, obj["metadata"]["name"]))

    client = await connected(cluster)
    children = Children(client, [namespace], dispatch)
    try:
        yield children, seen
    finally:
        await children.close()
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
        async with watching(cluster, kube_namespace) as (children, seen):
            children.start()
            await asyncio.wait_for(children.synced(kube_namespace), 30)
            await until(lambda: ("Deployment", None, "m") in seen, "the initial listing")
            assert [d.generation for d in children.deployments[key]] == [1]
            assert key not in children.pods

            apply(cluster, kube_namespace, child("Pod", "m-pod", "m"))
            await until(lambda: key in children.pods, "the pod's summary")
            assert ("Pod", "ADDED", "m-pod") in seen

            cluster.kubectl("delete", "pod", "m-pod", "-n", kube_namespace, "--grace-period=0",
                        "--force", "--wait=false")  # fmt: skip
            await until(lambda: key not in children.pods, "the pod's deletion")
            assert ("Pod", "DELETED", "m-pod") in seen

    asyncio.run(scenario())


def test_children_without_the_model_label_are_never_seen(
    cluster: Cluster, kube_namespace: str
) -> None:
    apply(cluster, kube_namespace, child("Deployment", "stray", None))

    async def scenario() -> None:
        async with watching(cluster, kube_namespace) as (children, seen):
            children.start()
            await asyncio.wait_for(children.synced(kube_namespace), 30)
            apply(cluster, kube_namespace, child("Deployment", "ours", "ours"))
            await until(lambda: (kube_namespace, "ours") in children.deployments, "ours")
            assert all(name != "stray" for _, _, name in seen)

    asyncio.run(scenario())


def test_a_relist_reports_children_deleted_while_not_watching(
    cluster: Cluster, kube_namespace: str
) -> None:
    """What happens after "410 Gone" or a broken watch: the list is the truth."""
    apply(cluster, kube_namespace, child("Deployment", "kept", "kept"))
    apply(cluster, kube_namespace, child("Deployment", "gone", "gone"))

    async def scenario() -> None:
        async with watching(cluster, kube_namespace) as (children, seen):
            known: dict[str, dict[str, Any]] = {}
            path, params = DEPLOYMENTS.path(kube_namespace), {"labelSelector": CHILD_SELECTOR}
            await children._list(DEPLOYMENTS, path, params, known)
            assert (kube_namespace, "gone") in children.deployments
            cluster.kubectl("delete", "deployment", "gone", "-n", kube_namespace)
            seen.clear()
            version = await children._list(DEPLOYMENTS, path, params, known)
            await until(lambda: ("Deployment", "DELETED", "gone") in seen, "the deletion")
            assert (kube_namespace, "gone") not in children.deployments
            assert (kube_namespace, "kept") in children.deployments
            await until(lambda: ("Deployment", None, "kept") in seen, "the listed one")
            assert version.isdigit()

    asyncio.run(scenario())
