"""The level-based reconcile: apply the desired children, then publish the status.

One `Reconciler` lives for the whole operator process (in kopf's memo). Every event of a
model and of its children ends in the same two steps, serialised per resource: server-side
apply of the Deployment and the Service (idempotent), then the status computed from the
children as the watches see them. A model is reconciled when this process first sees it
(the initial listing after a start, or its creation), when its generation moves (a spec
change), when one of its children drifts, and again after a failure that may pass. What is
remembered in memory is only an optimisation (which generation and child versions this
process handled); after a restart, the listing reapplies everything.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, TypeVar, cast

import kopf

from tti_operator.builders import (
    MODEL_LABEL,
    Owner,
    build_deployment,
    build_event,
    build_service,
    labels,
)
from tti_operator.kube import ApiError, KubeClient
from tti_operator.settings import OperatorSettings
from tti_operator.spec import API_VERSION, KIND, InvalidSpec, ModelSpec, parse_spec
from tti_operator.status import DeploymentState, PodState, Problem, compute_status, deployment_state

Key = tuple[str, str]
_T = TypeVar("_T")
#: Posts a Kubernetes Event about a resource: (resource, type, reason, message).
EventSink = Callable[[kopf.Body, str, str, str], None]
#: Seconds before a reconcile that failed for a reason that may pass is tried again.
RETRY_DELAY_S = 10

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRecord:
    """A TextToImageModel as the operator needs it, from its latest event."""

    owner: Owner
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    deleting: bool

    @classmethod
    def from_body(cls, body: Mapping[str, Any]) -> ModelRecord:
        meta = body.get("metadata", {})
        owner = Owner(name=meta["name"], namespace=meta["namespace"], uid=meta.get("uid", ""))
        return cls(
            owner=owner,
            generation=int(meta.get("generation", 0)),
            spec=dict(body.get("spec") or {}),
            status=dict(body.get("status") or {}),
            deleting=bool(meta.get("deletionTimestamp")),
        )

    @property
    def key(self) -> Key:
        return (self.owner.namespace, self.owner.name)

    @property
    def ref(self) -> kopf.Body:
        """Enough of the body for kopf to post Kubernetes Events about it."""
        o = self.owner
        meta = {"name": o.name, "namespace": o.namespace, "uid": o.uid}
        return cast(kopf.Body, {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta})


class Views(NamedTuple):
    """Live views of the children by (namespace, model name), updated in place by the watches."""

    deployments: Mapping[Key, Iterable[DeploymentState]]
    pods: Mapping[Key, Iterable[PodState]]

    def of(self, key: Key) -> tuple[DeploymentState | None, Iterable[PodState]]:
        """The model's Deployment, if there is one, and its pods."""
        return _first(self.deployments.get(key, ())), self.pods.get(key, ())


@dataclass
class Applied:
    """What this process last wrote for one model, to tell its own writes from hand edits."""

    deployment_generation: int = 0
    service_version: str = ""


class EventPoster:
    """Posts Kubernetes Events with the operator's client, in the background.

    Not `kopf.event`: that one only works inside kopf's handling of an object, and most
    Events (Ready, Degraded) follow a child's event, which kopf does not watch here. An
    Event that cannot be posted is logged and dropped: it never holds up a reconcile.
    """

    def __init__(self, client: KubeClient, component: str) -> None:
        self.client = client
        self.component = component
        self._posting: set[asyncio.Task[None]] = set()

    def __call__(self, resource: kopf.Body, type: str, reason: str, message: str) -> None:
        event = build_event(resource, type, reason, message, self.component, _now())
        task = asyncio.create_task(self._post(event))
        self._posting.add(task)
        task.add_done_callback(self._posting.discard)

    async def _post(self, event: dict[str, Any]) -> None:
        try:
            await self.client.create_event(event)
        except ApiError as error:
            logger.warning("could not post Event %s: %s", event["reason"], error)


@dataclass
class Reconciler:
    settings: OperatorSettings
    client: KubeClient
    event: EventSink | None = None  # None: EventPoster with this client
    #: Every model this process serves, as its latest event showed it.
    models: dict[Key, ModelRecord] = field(default_factory=dict)
    applied: dict[Key, Applied] = field(default_factory=dict)
    observed: dict[Key, int] = field(default_factory=dict)
    failures: dict[Key, Problem] = field(default_factory=dict)
    posted: dict[Key, dict[str, Any]] = field(default_factory=dict)
    locks: dict[Key, asyncio.Lock] = field(default_factory=dict)
    #: Scheduled status refreshes, and scheduled retries of a failed reconcile.
    pending: dict[Key, asyncio.Task[None]] = field(default_factory=dict)
    retrying: dict[Key, asyncio.Task[None]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.event is None:
            self.event = EventPoster(self.client, self.settings.field_manager)

    def _emit(self, resource: kopf.Body, type: str, reason: str, message: str) -> None:
        """Post an Event, and log it: what happened to a model, in `kubectl describe` and
        in the operator's log alike."""
        assert self.event is not None  # set in __post_init__
        meta = resource["metadata"]
        level = logging.INFO if type == "Normal" else logging.WARNING
        logger.log(level, "%s/%s: %s: %s", meta["namespace"], meta["name"], reason, message)
        self.event(resource, type, reason, message)

    def lock(self, key: Key) -> asyncio.Lock:
        return self.locks.setdefault(key, asyncio.Lock())

    def forget(self, key: Key) -> None:
        """The resource is gone: drop what was remembered about it."""
        for memory in (self.models, self.locks):
            memory.pop(key, None)
        self._drop_learnt(key)
        for tasks in (self.pending, self.retrying):
            if task := tasks.pop(key, None):
                task.cancel()

    def _drop_learnt(self, key: Key) -> None:
        for memory in (self.applied, self.observed, self.failures, self.posted):
            memory.pop(key, None)

    def _gone(self, record: ModelRecord) -> None:
        """The model no longer exists: treat it as being deleted until kopf says it is.

        Should kopf never say so (its watch relists after "410 Gone" without reporting what
        was deleted meanwhile), each child that garbage collection deletes would otherwise
        be recreated as drift, collected again, and so on for good.
        """
        if (latest := self._latest(record)) is not None:
            # What it learnt stays: the generation handled keeps a stale event of the model,
            # still queued before its deletion, from reconciling (recreating) it again.
            self.models[record.key] = replace(latest, deleting=True)

    def _latest(self, record: ModelRecord) -> ModelRecord | None:
        """The latest record of `record`'s model; None once it is deleted or replaced by a
        namesake. A step that waited (for the lock) must not act on what it was handed: a
        drift reconcile would reapply an older spec, or recreate a deleted model's children."""
        latest = self.models.get(record.key)
        if latest is None or latest.deleting or latest.owner.uid != record.owner.uid:
            return None
        return latest

    async def close(self) -> None:
        """Operator shutdown: drop scheduled refreshes and retries, close the connections."""
        for tasks in (self.pending, self.retrying):
            for task in tasks.values():
                task.cancel()
            tasks.clear()
        await self.client.close()

    # The entry points, one per kind of trigger.

    async def model_changed(
        self, event_type: str | None, record: ModelRecord, views: Views
    ) -> None:
        """An event of the model itself: reconcile a generation this process has not handled.

        Most events of a model are echoes of its own status patches; those only refresh the
        record. `event_type` is None for the listing when the operator starts.
        """
        key = record.key
        served = self.models.get(key)
        # A namesake: kopf gives each object (uid) a worker of its own, so a model deleted
        # and created again under the same name can be seen in either order.
        namesake = served is not None and served.owner.uid != record.owner.uid
        if event_type == "DELETED":
            if not namesake:  # the old one's late deletion: the new one stays served
                self.forget(key)
            return
        if namesake:
            self.forget(key)  # the new one: the old one's generation and children do not apply
        self.models[key] = record
        if record.deleting or self.observed.get(key) == record.generation:
            return
        await self.reconcile(record, views)

    async def reconcile(self, record: ModelRecord, views: Views) -> None:
        """Bring the children in line with the spec, then publish the status."""
        async with self.lock(record.key):
            await self._converge(record, views)

    async def child_changed(
        self,
        record: ModelRecord,
        kind: str,
        event_type: str | None,
        child: Mapping[str, Any],
        views: Views,
    ) -> None:
        """A Deployment, Service or Pod of the model changed: restore it if edited, then status."""
        if record.deleting:
            return
        key = record.key
        # Under the lock: an apply in flight must be recorded before its own echo is judged.
        async with self.lock(key):
            if self._drifted(record, kind, event_type, child):
                await self._converge(record, views)
                return
        # Children change in bursts (a rollout is a dozen events): one status patch after
        # the burst instead of one per event keeps the API server unloaded.
        self._later(self.pending, key, self.settings.status_delay_s, self._refresh, views)

    def _later(
        self,
        tasks: dict[Key, asyncio.Task[None]],
        key: Key,
        delay_s: float,
        step: Callable[[ModelRecord, Views], Coroutine[Any, Any, None]],
        views: Views,
    ) -> None:
        """Run `step` on the model's latest record after `delay_s`, once however often asked."""
        if key in tasks:
            return

        async def after_delay() -> None:
            await asyncio.sleep(delay_s)
            del tasks[key]
            if (record := self.models.get(key)) is not None:
                await step(record, views)  # each step checks that it is still current

        tasks[key] = asyncio.create_task(after_delay())

    async def _refresh(self, record: ModelRecord, views: Views) -> None:
        key = record.key
        async with self.lock(key):
            if (latest := self._latest(record)) is None:
                return
            try:
                await self._publish(latest, *views.of(key))
            except Exception as error:
                # A lost refresh would leave the status behind the pods (Ready never shown)
                # until some later child event, which a settled model may never have.
                self._failed(latest, error, views)

    # The steps.

    def _drifted(
        self, record: ModelRecord, kind: str, event_type: str | None, child: Mapping[str, Any]
    ) -> bool:
        """Was this child deleted or edited by someone else since this process applied it?"""
        key = record.key
        if kind == "Pod":
            return False
        if event_type == "DELETED":
            return True
        applied = self.applied.get(key)
        if event_type is None and applied is None:
            # The listing at start: the model's own first reconcile applies it anyway. A
            # relist after a broken watch is judged like any event: it is all that shows an
            # edit made while the watch was down.
            return False
        meta = child.get("metadata", {})
        if not labels(key[1]).items() <= (meta.get("labels") or {}).items():
            return True
        owners = meta.get("ownerReferences") or []
        if not any(ref.get("uid") == record.owner.uid for ref in owners):
            return True
        if applied is None:
            return True
        if kind == "Deployment":
            # Only spec edits bump the generation; older events are stale, not drift.
            return int(meta.get("generation", 0)) > applied.deployment_generation
        return str(meta.get("resourceVersion", "")) != applied.service_version

    async def _converge(self, record: ModelRecord, views: Views) -> None:
        """Apply and publish the model's latest record; a failure is retried (see `_failed`)."""
        if (latest := self._latest(record)) is None:
            return  # deleted or replaced while this waited for the lock
        try:
            await self._apply_and_publish(latest, views)
        except Exception as error:
            self._failed(latest, error, views)
        if latest.key not in self.models:
            # Deleted while in flight: what this run learnt after `forget` must not outlive it.
            self._drop_learnt(latest.key)

    def _failed(self, record: ModelRecord, error: Exception, views: Views) -> None:
        """Log a failed step and reconcile again later, unless the object itself was refused.

        Any other error is retried, an unexpected one too, as kopf's change handlers did:
        the generation is already marked handled and kopf's event handlers retry nothing,
        so without this the model would wait for its next spec change.
        """
        if isinstance(error, ApiError):
            logger.warning("could not reconcile %s/%s: %s", *record.key, error)
            if error.permanent:
                return
        else:
            logger.error("reconciling %s/%s failed: %r", *record.key, error, exc_info=error)
        self._later(self.retrying, record.key, RETRY_DELAY_S, self.reconcile, views)

    async def _apply_and_publish(self, record: ModelRecord, views: Views) -> None:
        key = record.key
        known, pods = views.of(key)
        self.observed[key] = record.generation
        try:
            spec = parse_spec(record.spec)
        except InvalidSpec as error:
            await self._fail(record, Problem("InvalidSpec", str(error)), known, pods)
            return  # nothing to retry until the spec changes
        try:
            deployment = await self._apply_children(record, spec, known)
        except ApiError as error:
            await self._fail(record, Problem("ApplyFailed", error.message), known, pods)
            raise
        self.failures.pop(key, None)
        await self._publish(record, deployment, pods)

    async def _apply_children(
        self, record: ModelRecord, spec: ModelSpec, known: DeploymentState | None
    ) -> DeploymentState:
        owner = record.owner
        image, playground = self.settings.server_image, self.settings.playground
        wanted = build_deployment(owner, spec, image, playground=playground)
        created, deployment = await self.client.apply(wanted)
        service_created, service = await self.client.apply(build_service(owner))
        state = deployment_state(deployment)
        self.applied[record.key] = Applied(
            deployment_generation=state.generation,
            service_version=str(service.get("metadata", {}).get("resourceVersion", "")),
        )
        if created or service_created:
            what = " and ".join(
                kind for kind, new in (("Deployment", created), ("Service", service_created)) if new
            )
            self._emit(record.ref, "Normal", "Created", f"created {what} {owner.name}")
        elif known is not None and state.generation != known.generation:
            message = f"updated Deployment {owner.name} to generation {record.generation}"
            self._emit(record.ref, "Normal", "Updated", message)
        return state

    async def _fail(
        self,
        record: ModelRecord,
        problem: Problem,
        known: DeploymentState | None,
        pods: Iterable[PodState],
    ) -> None:
        """Publish the problem; the replicas shown stay those of the Deployment that exists
        (an edit the API server refused leaves the previous pods serving)."""
        self.failures[record.key] = problem
        self._emit(record.ref, "Warning", "Failed", f"{problem.reason}: {problem.message}")
        await self._publish(record, known, pods)

    async def _publish(
        self, record: ModelRecord, deployment: DeploymentState | None, pods: Iterable[PodState]
    ) -> None:
        """Compute the status from the children and patch it if it changed."""
        key = record.key
        previous = self.posted.get(key) or dict(record.status)
        desired, gpus = _desired(record.spec)
        status = compute_status(
            owner=record.owner,
            desired=desired,
            gpus=gpus,
            generation=self.observed.get(key, int(previous.get("observedGeneration", 0))),
            deployment=deployment,
            pods=pods,
            failure=self.failures.get(key),
            previous=previous,
            now=_now(),
        )
        if status == previous:
            return
        try:
            await self.client.patch_status(record.owner.namespace, record.owner.name, status)
        except ApiError as error:
            if error.status == 404:
                self._gone(record)  # garbage collection takes the children
                return
            raise
        self.posted[key] = status
        self._announce(record, previous, status)

    def _announce(
        self, record: ModelRecord, before: Mapping[str, Any], after: Mapping[str, Any]
    ) -> None:
        """Post an Event when the model becomes ready or degraded, for `kubectl describe`."""
        degraded, was_degraded = _condition(after, "Degraded"), _condition(before, "Degraded")
        if degraded.get("status") == "True" and degraded.get("reason") != was_degraded.get(
            "reason"
        ):
            self._emit(record.ref, "Warning", str(degraded["reason"]), str(degraded["message"]))
        ready, was_ready = _condition(after, "Ready"), _condition(before, "Ready")
        if ready.get("status") == "True" and was_ready.get("status") != "True":
            self._emit(record.ref, "Normal", "Ready", str(ready.get("message", "")))


def _first(items: Iterable[_T]) -> _T | None:
    return next(iter(items), None)


def _desired(raw_spec: Mapping[str, Any]) -> tuple[int, int]:
    """Replicas and GPUs, also for a spec that does not parse (status still has to say so)."""
    try:
        spec = parse_spec(raw_spec)
    except InvalidSpec:
        replicas = raw_spec.get("replicas", 1)
        gpus = raw_spec.get("gpus", 0)
        return (replicas if isinstance(replicas, int) else 0, gpus if isinstance(gpus, int) else 0)
    return spec.replicas, spec.gpus


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})


def model_key(namespace: str | None, child_labels: Mapping[str, str]) -> Key | None:
    """The (namespace, model) a child belongs to, from its labels."""
    name = child_labels.get(MODEL_LABEL)
    return (namespace, name) if namespace and name else None
