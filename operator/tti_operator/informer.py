"""Lean watches of the children, and the cache they keep: client-go's informer, for the kinds table.

kopf sends every event of every object it watches through its whole machinery (a worker
per object, body views, three loggers, a diff base, causes, handler bookkeeping): about
2.5 ms of CPU per event, and one model's children make a dozen events while it rolls out.
These watches keep a small `Child` per object (its identity and the summary its kind asks
for), drop the body at once, and tell the controller which model changed; kopf still
watches the models themselves.

Each watch lists first, then watches from the list's resourceVersion; it resumes after the
server ends a watch, and lists again after "410 Gone" or a broken connection, reporting
children that vanished meanwhile as deleted. A deleted child of a kind the operator writes
stays in the cache as a tombstone until its model is reconciled, so the reconciler can tell
"deleted" from "not seen yet" (a write of its own whose event is still on its way).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from tti_kube.client import KubeClient
from tti_kube.watch import list_and_watch, list_into
from tti_operator.builders import MODEL_LABEL, labels
from tti_operator.kinds import CHILD_KINDS, ChildKind
from tti_operator.ownership import MANAGED_BY, MANAGED_BY_LABEL

Obj = dict[str, Any]
#: A model by (namespace, name).
Key = tuple[str, str]
#: Told that a child of the model changed; it only enqueues the model.
OnChange = Callable[[Key], None]

CHILD_SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{MODEL_LABEL}"

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Child:
    """What the cache keeps of one child: who it is, whose it is, which version, a summary."""

    name: str
    uid: str
    generation: int
    resource_version: str
    #: The uid of its controlling owner, "" for none.
    controller_uid: str
    #: Does it carry every label the operator gives its model's children?
    labelled: bool
    summary: object
    deleted: bool = False

    @classmethod
    def of(cls, kind: ChildKind, model: str, obj: Mapping[str, Any], deleted: bool) -> Child:
        meta = obj.get("metadata") or {}
        owners = meta.get("ownerReferences") or []
        controller: Mapping[str, Any] = next((o for o in owners if o.get("controller")), {})
        return cls(
            name=str(meta.get("name", "")),
            uid=str(meta.get("uid", "")),
            generation=int(meta.get("generation", 0)),
            resource_version=str(meta.get("resourceVersion", "")),
            controller_uid=str(controller.get("uid", "")),
            labelled=labels(model).items() <= (meta.get("labels") or {}).items(),
            summary=None if deleted or kind.summarise is None else kind.summarise(obj),
            deleted=deleted,
        )


def model_key(namespace: str | None, child_labels: Mapping[str, str]) -> Key | None:
    """The (namespace, model) a child belongs to, from its labels."""
    name = child_labels.get(MODEL_LABEL)
    return (namespace, name) if namespace and name else None


class ChildCache:
    """Every child the watches have shown, by kind and model; fed by `observe`."""

    def __init__(self, on_change: OnChange, kinds: Iterable[ChildKind] = CHILD_KINDS) -> None:
        self.on_change = on_change
        self._items: dict[str, dict[Key, dict[str, Child]]] = {k.kind: {} for k in kinds}
        #: Per kind: uid -> (model, name), to find a child again whatever its event says.
        self._where: dict[str, dict[str, tuple[Key, str]]] = {k.kind: {} for k in kinds}

    def observe(self, kind: ChildKind, event_type: str | None, obj: Mapping[str, Any]) -> None:
        """Keep what one event (None: a listed object) shows of a child; tell its model."""
        meta = obj.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        key = model_key(meta.get("namespace"), meta.get("labels") or {})
        if (held := self._where[kind.kind].get(uid)) is not None and held[0] != key:
            # Relabelled away from its model: gone, as far as that model is concerned.
            self.observe(kind, "DELETED", self.identity(kind, uid))
        if key is None:
            return
        deleted = event_type == "DELETED"
        child = Child.of(kind, key[1], obj, deleted)
        if deleted and not kind.applied:
            self._drop(kind, uid)
        else:
            self._put(kind, key, child)
        self.on_change(key)

    def children(self, kind: ChildKind, key: Key) -> Mapping[str, Child]:
        """The model's children of `kind` by name, tombstones included."""
        return self._items[kind.kind].get(key, {})

    def summaries(self, kind: ChildKind, key: Key) -> list[object]:
        """The summaries of the model's live children of `kind`."""
        return [c.summary for c in self.children(kind, key).values() if not c.deleted]

    def forget_deleted(self, key: Key) -> None:
        """The model was reconciled with its children gone: drop their tombstones."""
        for kind, by_model in self._items.items():
            children = by_model.get(key, {})
            for name in [name for name, child in children.items() if child.deleted]:
                self._where[kind].pop(children.pop(name).uid, None)
            if not children:
                by_model.pop(key, None)

    def uids(self, kind: ChildKind, namespace: str | None) -> Iterator[str]:
        """The live children of `kind` in `namespace` (None: all), for a relist to compare."""
        for uid, (key, name) in list(self._where[kind.kind].items()):
            if namespace is None or key[0] == namespace:
                child = self._items[kind.kind][key][name]
                if not child.deleted:
                    yield uid

    def identity(self, kind: ChildKind, uid: str) -> Obj:
        """Enough of a cached child to report it deleted."""
        key, name = self._where[kind.kind][uid]
        meta = {"namespace": key[0], "name": name, "uid": uid, "labels": {MODEL_LABEL: key[1]}}
        return {"metadata": meta}

    def _put(self, kind: ChildKind, key: Key, child: Child) -> None:
        children = self._items[kind.kind].setdefault(key, {})
        if (replaced := children.get(child.name)) is not None and replaced.uid != child.uid:
            self._where[kind.kind].pop(replaced.uid, None)  # an earlier incarnation's tombstone
        children[child.name] = child
        self._where[kind.kind][child.uid] = (key, child.name)

    def _drop(self, kind: ChildKind, uid: str) -> None:
        if (where := self._where[kind.kind].pop(uid, None)) is None:
            return
        key, name = where
        children = self._items[kind.kind].get(key, {})
        children.pop(name, None)
        if not children:
            self._items[kind.kind].pop(key, None)


class Informer:
    """The watches of every child kind in the served namespaces, feeding one `ChildCache`."""

    def __init__(
        self,
        client: KubeClient,
        namespaces: Iterable[str],
        cache: ChildCache,
        kinds: Iterable[ChildKind] = CHILD_KINDS,
    ) -> None:
        self.client = client
        self.cache = cache
        self.kinds = tuple(kinds)
        self.namespaces: list[str | None] = list(namespaces) or [None]  # None: all namespaces
        self._tasks: list[asyncio.Task[None]] = []
        self._listed: set[tuple[str, str | None]] = set()
        # Per namespace: one that cannot be listed (no RoleBinding there, say) must not hold
        # up the models of the others.
        self._synced = {namespace: asyncio.Event() for namespace in self.namespaces}

    def start(self) -> None:
        """Start every watch (idempotent); see `synced`."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._watch(kind, namespace), name=f"watch {kind.plural}")
                for kind in self.kinds
                for namespace in self.namespaces
            ]

    async def synced(self, namespace: str) -> None:
        """Wait until every watch covering `namespace` has listed once."""
        covering = self._synced.get(namespace) or self._synced.get(None)
        if covering is not None:  # None: not served here, nothing to wait for
            await covering.wait()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # The watch of one kind in one namespace (or all).

    async def _watch(self, kind: ChildKind, namespace: str | None) -> None:
        path, params = kind.collection_path(namespace), {"labelSelector": CHILD_SELECTOR}
        sink = _ChildSink(self.cache, kind, namespace)
        await list_and_watch(
            self.client, path, params, sink, lambda: self._mark_listed(kind, namespace)
        )

    async def relist(self, kind: ChildKind, namespace: str | None) -> str:
        """List the children of `kind`, report those gone since, and return where to watch from."""
        path, params = kind.collection_path(namespace), {"labelSelector": CHILD_SELECTOR}
        return await list_into(self.client, path, params, _ChildSink(self.cache, kind, namespace))

    def _mark_listed(self, kind: ChildKind, namespace: str | None) -> None:
        self._listed.add((kind.plural, namespace))
        if all((each.plural, namespace) in self._listed for each in self.kinds):
            self._synced[namespace].set()


class _ChildSink:
    """One kind's watch in one namespace (None: all), feeding the child cache."""

    def __init__(self, cache: ChildCache, kind: ChildKind, namespace: str | None) -> None:
        self.cache, self.kind, self.namespace = cache, kind, namespace

    def listed(self, items: list[Obj]) -> None:
        listed = {str(item["metadata"].get("uid")) for item in items}
        for uid in set(self.cache.uids(self.kind, self.namespace)) - listed:
            self.cache.observe(self.kind, "DELETED", self.cache.identity(self.kind, uid))
        for item in items:
            self.cache.observe(self.kind, None, item)

    def event(self, event_type: str, obj: Obj) -> None:
        self.cache.observe(self.kind, event_type, obj)
