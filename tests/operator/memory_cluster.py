"""An in-memory API server and a running `Controller` against it, for the reconcile tests.

`MemoryApi` stores what is applied (bumping a Deployment's generation when its spec
changes, as the API server does) and reports every write to the controller's child cache
the way the watches would, at once or, with `lagging`, only when `flush`ed. The real API
server, apply semantics and garbage collection are exercised in test_operator_cluster.py.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from tti_kube.client import ApiError, KubeClient
from tti_operator.builders import labels, owner_reference
from tti_operator.cache import WeightsCache
from tti_operator.controller import Controller
from tti_operator.informer import ChildCache
from tti_operator.kinds import CACHE_KINDS, POD, ChildKind
from tti_operator.reconciler import ModelRecord
from tti_operator.settings import OperatorSettings
from tti_operator.workqueue import Backoff

Obj = dict[str, Any]
T = TypeVar("T")

#: Retries in the tests: fast, still doubling.
FAST_BACKOFF = Backoff(base_s=0.01, max_s=0.08)
#: Longer than any test: a model's second decision never comes of time passing.
AUTOSCALE_INTERVAL_S = 300.0


class MemoryApi(KubeClient):
    def __init__(self) -> None:
        super().__init__("test")
        self.objects: dict[tuple[str, str], Obj] = {}  # (kind, name) -> object
        self.applies: list[tuple[str, str]] = []
        self.statuses: list[Obj] = []
        self.status_of: dict[str, list[Obj]] = {}
        #: The scale writes, as (name, replicas).
        self.scales: list[tuple[str, int]] = []
        #: Raised by apply / patch_status; a callable decides per object name.
        self.refuse: Exception | Callable[[str], Exception | None] | None = None
        self.refuse_status: Exception | None = None
        self.refuse_scale: Exception | None = None
        #: While set, an apply waits for it (a request in flight).
        self.gate: asyncio.Event | None = None
        self.cache: ChildCache | None = None
        #: Where the model cache's objects are reported (set by `Harness`).
        self.weights: WeightsCache | None = None
        #: The log of each pod, by name (the model cache reads a fetch's progress there).
        self.logs: dict[str, str] = {}
        self.deletes: list[tuple[str, str]] = []
        #: Where the watch events are delivered (the controller's loop, set by `Harness`).
        self.loop: asyncio.AbstractEventLoop | None = None
        self.lagging = False
        self._unseen: list[tuple[ChildKind, str, Obj]] = []
        self._uids = (f"child-{n}" for n in itertools.count(1))
        self._versions = itertools.count(1)

    # What the operator calls.

    async def apply(self, kind: ChildKind, obj: Obj) -> tuple[bool, Obj]:
        name = obj["metadata"]["name"]
        if self.gate is not None:
            await self.gate.wait()
        if (error := self._refusal(name)) is not None:
            raise error
        self.applies.append((obj["kind"], name))
        old = self.objects.get((obj["kind"], name))
        stored = copy.deepcopy(obj)
        meta = stored["metadata"]
        meta["uid"] = old["metadata"]["uid"] if old else next(self._uids)
        generation = 1 if old is None else old["metadata"]["generation"]
        if old is not None and old.get("spec") != obj.get("spec"):
            generation += 1
        meta["generation"] = generation
        if old is not None and old.get("status"):
            stored["status"] = old["status"]
        unchanged = old is not None and {**old, "metadata": {}} == {**stored, "metadata": {}}
        same_meta = old is not None and _meta(old) == _meta(stored)
        if unchanged and same_meta:
            meta["resourceVersion"] = old["metadata"]["resourceVersion"]  # a no-op apply
            self.objects[obj["kind"], name] = stored
            return False, copy.deepcopy(stored)
        self._store(kind, stored, "ADDED" if old is None else "MODIFIED")
        return old is None, copy.deepcopy(stored)

    async def patch_status(self, namespace: str, name: str, status: Obj) -> None:
        if self.refuse_status is not None:
            raise self.refuse_status
        self.statuses.append(status)
        self.status_of.setdefault(name, []).append(status)

    async def scale(
        self, namespace: str, name: str, replicas: int, resource_version: str = ""
    ) -> None:
        if self.refuse_scale is not None:
            raise self.refuse_scale
        self.scales.append((name, replicas))

    async def merge_patch(self, kind: ChildKind, namespace: str, name: str, body: Obj) -> Obj:
        obj = copy.deepcopy(self.objects[kind.kind, name])
        annotations = obj["metadata"].setdefault("annotations", {})
        for key, value in body["metadata"]["annotations"].items():
            if value is None:
                annotations.pop(key, None)
            else:
                annotations[key] = value
        return copy.deepcopy(self._store(kind, obj, "MODIFIED"))

    async def delete(self, kind: ChildKind, namespace: str, name: str, uid: str) -> None:
        obj = self.objects.get((kind.kind, name))
        if obj is not None and obj["metadata"]["uid"] == uid:
            self.deletes.append((kind.kind, name))
            self.remove(kind, name)

    async def list(self, path: str, params: dict[str, str]) -> Obj:
        """The objects of the path's plural whose labels have every `k=v` of the selector
        (all the operator lists by hand: a finished fetch Job's pods)."""
        plural = path.rsplit("/", 1)[-1]
        wanted = dict(pair.split("=", 1) for pair in params["labelSelector"].split(","))
        items = [
            copy.deepcopy(obj)
            for obj in self.objects.values()
            if f"{obj['kind'].lower()}s" == plural
            and wanted.items() <= (obj["metadata"].get("labels") or {}).items()
        ]
        return {"items": items}

    async def log(self, namespace: str, pod: str, container: str, tail_lines: int) -> str:
        return self.logs.get(pod, "")

    async def create_event(self, event: Obj) -> None:
        raise AssertionError("the tests collect Events with a sink")

    # What someone else does.

    def put(self, kind: ChildKind, obj: Obj) -> Obj:
        """Create or replace an object as another client would."""
        stored = copy.deepcopy(obj)
        stored["metadata"].setdefault("uid", next(self._uids))
        stored["metadata"].setdefault("generation", 1)
        old = self.objects.get((kind.kind, stored["metadata"]["name"]))
        return self._store(kind, stored, "ADDED" if old is None else "MODIFIED")

    def edit(self, kind: ChildKind, name: str, change: Callable[[Obj], None], spec: bool) -> Obj:
        """A hand edit; `spec`: it changes the spec (the generation moves)."""
        obj = copy.deepcopy(self.objects[kind.kind, name])
        change(obj)
        if spec:
            obj["metadata"]["generation"] += 1
        return self._store(kind, obj, "MODIFIED")

    def remove(self, kind: ChildKind, name: str) -> None:
        """A delete (by hand, or by garbage collection)."""
        obj = self.objects.pop((kind.kind, name))
        self._report(kind, "DELETED", obj)

    def flush(self) -> None:
        """The watches catch up."""
        unseen, self._unseen = self._unseen, []
        for kind, event_type, obj in unseen:
            self._observe(kind, event_type, obj)

    def _store(self, kind: ChildKind, obj: Obj, event_type: str) -> Obj:
        obj["metadata"]["resourceVersion"] = str(next(self._versions))
        self.objects[kind.kind, obj["metadata"]["name"]] = obj
        self._report(kind, event_type, obj)
        return obj

    def _report(self, kind: ChildKind, event_type: str, obj: Obj) -> None:
        if self.lagging:
            self._unseen.append((kind, event_type, copy.deepcopy(obj)))
        else:
            self._observe(kind, event_type, copy.deepcopy(obj))

    def _observe(self, kind: ChildKind, event_type: str, obj: Obj) -> None:
        # Delivered on the loop's next turn, as a watch stream would.
        if kind in CACHE_KINDS and self.weights is not None and self.loop is not None:
            self.loop.call_soon(self.weights.observe, kind, event_type, obj)
        elif self.cache is not None and self.loop is not None:
            self.loop.call_soon(self.cache.observe, kind, event_type, obj)

    def _refusal(self, name: str) -> Exception | None:
        if callable(self.refuse):
            return self.refuse(name)
        return self.refuse


def _meta(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {k: meta.get(k) for k in ("labels", "ownerReferences", "annotations")}


def body(
    spec: Obj | None = None,
    generation: int = 1,
    uid: str = "u",
    name: str = "m",
    deleting: bool = False,
) -> Obj:
    """A TextToImageModel `ns/<name>` as kopf delivers it."""
    meta: Obj = {"name": name, "namespace": "ns", "uid": uid, "generation": generation}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "spec": spec or {"model": "stub"}}


def pod(model: str, name: str, reason: str | None = None, message: str = "") -> Obj:
    """A Pod of `model`: Ready, or stuck for `reason` (Unschedulable or a waiting reason)."""
    status: Obj = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
    if reason == "Unschedulable":
        scheduled = {"type": "PodScheduled", "status": "False", "reason": reason,
                     "message": message}  # fmt: skip
        status = {"phase": "Pending", "conditions": [scheduled]}
    elif reason is not None:
        waiting = {"state": {"waiting": {"reason": reason, "message": message}}, "name": "server"}
        status = {"phase": "Running", "containerStatuses": [waiting]}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "ns", "labels": labels(model)},
        "status": status,
    }


class Harness:
    """A `Controller` on its own event loop, with the in-memory API and an Event sink."""

    def __init__(
        self,
        status_delay_s: float = 0,
        api: MemoryApi | None = None,
        network_policies: bool = True,
    ) -> None:
        self.loop = asyncio.new_event_loop()
        self.api = api or MemoryApi()
        self.events: list[tuple[str, str]] = []
        settings = OperatorSettings.model_validate(
            {
                "status_delay_s": status_delay_s,
                "concurrent_reconciles": 4,
                # The autoscaler's own loop ticks once at the start, on no models: the tests
                # tick it themselves (`tick`), one decision per model and state.
                "autoscale_interval_s": AUTOSCALE_INTERVAL_S,
                "network_policies": network_policies,
            }
        )
        self.controller = Controller(
            settings,
            self.api,
            event=lambda _res, kind, reason, _msg: self.events.append((kind, reason)),
            backoff=FAST_BACKOFF,
        )
        self.api.cache, self.api.loop = self.controller.cache, self.loop
        self.api.weights = self.controller.weights
        self.reconciles: list[tuple[str, str]] = []
        reconcile = self.controller.reconciler.reconcile

        async def counted(key: tuple[str, str]) -> float | None:
            self.reconciles.append(key)
            return await reconcile(key)

        self.controller.reconciler.reconcile = counted  # type: ignore[method-assign]
        self.run(self._start())

    async def _start(self) -> None:
        self.controller.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def close(self) -> None:
        self.run(self.controller.close())
        self.loop.close()

    # Triggers, each followed by the controller settling.

    def model(self, model: Obj, event_type: str | None = "ADDED", settle: bool = True) -> None:
        self.loop.call_soon(self.controller.model_changed, event_type, model)
        if settle:
            self.settle()

    def tick(self) -> None:
        """One look of the autoscaler at every model, then the controller settling."""
        self.run(self.controller.autoscaler.tick())
        self.settle()

    def enqueue(self, name: str = "m", settle: bool = True) -> None:
        self.loop.call_soon(self.controller.queue.add, ("ns", name))
        if settle:
            self.settle()

    def observe(self, kind: ChildKind, event_type: str | None, obj: Obj) -> None:
        """A watch event (None: a listed object) reaching the cache."""
        self.loop.call_soon(self.controller.cache.observe, kind, event_type, obj)

    def pods(self, *pods: Obj) -> None:
        for each in pods:
            self.api.put(POD, each)
        self.settle()

    def settle(self, timeout_s: float = 5.0, waiting_ok: bool = False) -> None:
        """Run until the queue is idle: nothing queued, in progress or (unless `waiting_ok`)
        waiting for a delay."""
        queue = self.controller.queue

        def settled() -> bool:
            return not queue.busy() if waiting_ok else queue.idle()

        async def turn_then_settle() -> None:
            # Settled twice, with the loop's turns between: watch events scheduled with
            # call_soon by the last write are delivered (and may enqueue) in between.
            while True:
                await self.until(settled, "the queue to settle", timeout_s)
                await asyncio.sleep(0.005)
                if settled():
                    return

        self.run(turn_then_settle())

    async def until(self, done: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
        deadline = self.loop.time() + timeout_s
        while not done():
            if self.loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            await asyncio.sleep(0.002)

    def stored(self, kind: str, name: str = "m") -> Obj:
        return self.api.objects[kind, name]

    def record(self, name: str = "m") -> ModelRecord | None:
        return self.controller.store.get(("ns", name))

    def forgotten(self, name: str = "m") -> bool:
        key = ("ns", name)
        return self.record(name) is None and key not in self.controller.reconciler.states


def owned_by(obj: Obj, uid: str, name: str = "m") -> Obj:
    """`obj` with the labels and controlling owner reference of model `name`/`uid`."""
    from tti_operator.builders import Owner

    obj = copy.deepcopy(obj)
    obj["metadata"]["labels"] = labels(name)
    obj["metadata"]["ownerReferences"] = [owner_reference(Owner(name, "ns", uid))]
    return obj


def refuse_name(name: str, error: ApiError) -> Callable[[str], Exception | None]:
    return lambda each: error if each == name else None
