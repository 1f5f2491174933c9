"""Lean watches of the children: the Deployments, Services and Pods the models own.

kopf sends every event of every object it watches through its whole machinery (a worker
per object, body views, three loggers, a diff base, causes, handler bookkeeping): about
2.5 ms of CPU per event, and one model's children make a dozen events while it rolls out.
That was most of the operator's CPU and memory under a burst of new models. These watches
keep a small summary per child (`DeploymentState`, `PodState`), drop the body at once, and
hand the event to the reconciler. kopf still runs everything about the models themselves.

Each watch lists first, then watches from the list's resourceVersion; it resumes after the
server ends a watch, and lists again after "410 Gone" or a broken connection (children
that vanished meanwhile are reported as deleted).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tti_operator.builders import MANAGED_BY, MODEL_LABEL
from tti_operator.kube import ApiError, KubeClient
from tti_operator.reconciler import Key, model_key
from tti_operator.status import DeploymentState, PodState, deployment_state, pod_state

Obj = dict[str, Any]
#: Receives each child event: (kind, its model, event type or None for a listed object,
#: the object's metadata).
Dispatch = Callable[[str, Key, str | None, Obj], Coroutine[Any, Any, None]]

CHILD_SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY},{MODEL_LABEL}"
#: Seconds before a watch that failed is listed again (doubling up to the last).
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 15.0)

logger = logging.getLogger(__name__)
_S = TypeVar("_S")


@dataclass(frozen=True)
class ChildKind:
    kind: str
    api: str  # "/api/v1" or "/apis/<group>/<version>"
    plural: str

    def path(self, namespace: str | None) -> str:
        where = f"/namespaces/{namespace}" if namespace else ""
        return f"{self.api}{where}/{self.plural}"


DEPLOYMENTS = ChildKind("Deployment", "/apis/apps/v1", "deployments")
SERVICES = ChildKind("Service", "/api/v1", "services")
PODS = ChildKind("Pod", "/api/v1", "pods")
KINDS = (DEPLOYMENTS, SERVICES, PODS)


class ByModel(Mapping[Key, Iterable[_S]], Generic[_S]):
    """A live read-only view: model key -> the summaries of its children of one kind."""

    def __init__(self) -> None:
        self._items: dict[Key, dict[str, _S]] = {}

    def __getitem__(self, key: Key) -> Iterable[_S]:
        return self._items[key].values()

    def __iter__(self) -> Iterator[Key]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def update(self, key: Key, uid: str, summary: _S | None) -> None:
        """Keep `summary` for the child `uid`; None: the child is gone."""
        if summary is not None:
            self._items.setdefault(key, {})[uid] = summary
            return
        children = self._items.get(key)
        if children is not None:
            children.pop(uid, None)
            if not children:
                del self._items[key]


class Children:
    """What the watches have seen, and the watches themselves."""

    def __init__(self, client: KubeClient, namespaces: Iterable[str], dispatch: Dispatch) -> None:
        self.client = client
        self.namespaces: list[str | None] = list(namespaces) or [None]  # None: all namespaces
        self.dispatch = dispatch
        self.deployments: ByModel[DeploymentState] = ByModel()
        self.pods: ByModel[PodState] = ByModel()
        self._tasks: list[asyncio.Task[None]] = []
        self._handling: set[asyncio.Task[None]] = set()
        self._listed: set[tuple[str, str | None]] = set()
        # Per namespace: one that cannot be listed (no RoleBinding there, say) must not hold
        # up the models of the others.
        self._synced = {namespace: asyncio.Event() for namespace in self.namespaces}

    def start(self) -> None:
        """Start every watch (idempotent); see `synced`."""
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._watch(kind, namespace), name=f"watch {kind.plural}")
                for kind in KINDS
                for namespace in self.namespaces
            ]

    async def synced(self, namespace: str) -> None:
        """Wait until every watch covering `namespace` has listed once."""
        covering = self._synced.get(namespace) or self._synced.get(None)
        if covering is not None:  # None: not served here, nothing to wait for
            await covering.wait()

    async def close(self) -> None:
        tasks = [*self._tasks, *self._handling]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks = []

    def record(self, kind: str, event_type: str | None, obj: Obj) -> Key | None:
        """Keep the summary of one child event; returns the model it belongs to."""
        meta = obj.get("metadata") or {}
        key = model_key(meta.get("namespace"), meta.get("labels") or {})
        if key is None:
            return None
        uid, deleted = str(meta.get("uid", "")), event_type == "DELETED"
        if kind == DEPLOYMENTS.kind:
            self.deployments.update(key, uid, None if deleted else deployment_state(obj))
        elif kind == PODS.kind:
            self.pods.update(key, uid, None if deleted else pod_state(obj))
        return key

    # The watch loop of one kind in one namespace (or all).

    async def _watch(self, kind: ChildKind, namespace: str | None) -> None:
        path, params = kind.path(namespace), {"labelSelector": CHILD_SELECTOR}
        known: dict[str, Obj] = {}  # uid -> the child's metadata, for a relist's deletions
        failures = 0
        while True:
            try:
                version = await self._list(kind, path, params, known)
                self._mark_listed(kind, namespace)
                failures = 0
                while version:  # resumed after each server-side timeout; "" means relist
                    version = await self._follow(kind, path, params, version, known)
            except Exception as error:  # a watch must outlive anything one response does
                delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
                failures += 1
                logger.warning(
                    "watching %s: %s; listing again in %.0f s",
                    path,
                    error if isinstance(error, ApiError) else repr(error),
                    delay,
                )
                await asyncio.sleep(delay)

    async def _list(
        self, kind: ChildKind, path: str, params: dict[str, str], known: dict[str, Obj]
    ) -> str:
        listing = await self.client.list(path, params)
        items = {str(item["metadata"].get("uid")): item for item in listing.get("items") or []}
        for uid in set(known) - set(items):
            self._handle(kind, "DELETED", known[uid], known)
        for item in items.values():
            # The list's items carry no kind; the reconciler's drift check does not need it.
            self._handle(kind, None, item, known)
        return str(listing.get("metadata", {}).get("resourceVersion", ""))

    async def _follow(
        self,
        kind: ChildKind,
        path: str,
        params: dict[str, str],
        version: str,
        known: dict[str, Obj],
    ) -> str:
        """Watch from `version`; returns where to resume, or "" when a relist is needed."""
        async for event in self.client.watch(path, {**params, "resourceVersion": version}):
            event_type, obj = event.get("type"), event.get("object") or {}
            if event_type == "ERROR":
                if obj.get("code") == 410:  # too old: the history is gone, list again
                    return ""
                raise ApiError(int(obj.get("code") or 500), str(obj.get("message", obj)))
            version = str(obj.get("metadata", {}).get("resourceVersion") or version)
            if event_type != "BOOKMARK":
                self._handle(kind, event_type, obj, known)
        return version

    def _handle(
        self, kind: ChildKind, event_type: str | None, obj: Obj, known: dict[str, Obj]
    ) -> None:
        """Summaries now, in stream order; the reconciler's part in a task of its own, so a
        child waiting for its model's lock never holds up the other models' events."""
        # Only the metadata is kept and travels on: under a burst thousands of events wait
        # for their model's lock, and whole Pod bodies would be most of the operator's memory.
        identity = _identity(obj)
        uid = str(identity["metadata"].get("uid"))
        if event_type == "DELETED":
            known.pop(uid, None)
        else:
            known[uid] = identity  # what a relist needs to report it deleted
        key = self.record(kind.kind, event_type, obj)
        if key is None:
            return
        task = asyncio.create_task(self.dispatch(kind.kind, key, event_type, identity))
        self._handling.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._handling.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            logger.error("handling a child event failed: %r", error, exc_info=error)

    def _mark_listed(self, kind: ChildKind, namespace: str | None) -> None:
        self._listed.add((kind.plural, namespace))
        if all((each.plural, namespace) in self._listed for each in KINDS):
            self._synced[namespace].set()


def _identity(obj: Obj) -> Obj:
    """What the reconciler reads of a child (who it is, whose it is, which version)."""
    meta = obj.get("metadata") or {}
    return {"metadata": {k: meta[k] for k in _IDENTITY if k in meta}}


_IDENTITY = (
    "name",
    "namespace",
    "uid",
    "labels",
    "ownerReferences",
    "generation",
    "resourceVersion",
)
