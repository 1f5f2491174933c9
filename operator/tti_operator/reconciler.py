"""The reconcile of one model, in controller-runtime's shape: read the latest, converge, publish.

`Reconciler.reconcile(key)` is all a worker of the queue calls, and it never acts on what a
trigger handed over: it reads the model's latest record from the `ModelStore` (fed by kopf's
events) and its children from the informer's `ChildCache`, then

1. builds the desired children with the pure builders and server-side applies those that
   need it: all of them for a generation this process has not applied, else only a child
   deleted or edited by someone else (see `judge`);
2. deletes the model's own children that are no longer desired, of the kinds that allow it
   (the NetworkPolicy, when the operator's `network_policies` setting is turned off);
3. computes the status from the children and patches it if it changed.

The Deployment and the Service are wanted while their model exists, and go with it by
owner-reference garbage collection.

A model that is gone, being deleted or replaced by a namesake needs no special case: its
latest record says so, and the uid tells a namesake apart. What is remembered per model
(`ModelState`) only saves requests; after a restart the first reconcile applies everything.
"""

from __future__ import annotations

import asyncio
import datetime
import enum
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import kopf

from tti_contracts.api import API_VERSION, KIND, declared_replicas
from tti_kube.client import ApiError, KubeClient
from tti_operator import adapters
from tti_operator.adapters import AdaptersState, Fetches, FetchJobState, Served
from tti_operator.builders import Owner, build_event, desired_children
from tti_operator.cache import WeightsCache
from tti_operator.informer import Child, ChildCache, Key
from tti_operator.kinds import (
    ADAPTER_JOB,
    CHILD_KINDS,
    DEPLOYMENT,
    POD,
    ChildKind,
    Drift,
    kind_of,
)
from tti_operator.settings import OperatorSettings
from tti_operator.spec import InvalidSpec, ModelSpec, parse_spec
from tti_operator.status import DeploymentState, PodState, Problem, compute_status
from tti_operator.weights import (
    COMMIT,
    LAST_ERROR,
    RETRY_AT,
    Weights,
    entry_for,
    fetch_pod_state,
)

Obj = dict[str, Any]
#: Posts a Kubernetes Event about a resource: (resource, type, reason, message).
EventSink = Callable[[kopf.Body, str, str, str], None]
#: The autoscaler's latest decision about a model, for `status.autoscaling` (None: none).
AutoscalingStatus = Callable[[Key], Mapping[str, Any] | None]
#: Builds the children a model should have (see `builders.desired_children`).
Build = Callable[[Owner, ModelSpec, OperatorSettings, Weights | None, Fetches | None], list[Obj]]
#: Seconds a child this process wrote may go unseen by the watches before it is written
#: again (a watch that was down while it was created and deleted shows nothing at all).
UNSEEN_WRITE_S = 30.0
#: Seconds between two reads of a model pod's adapter states while they are not all loaded.
ADAPTERS_EVERY_S = 3.0
#: Lines of a model pod's log searched for its last adapter state line.
ADAPTERS_LOG_LINES = 200
#: Seconds before a failed adapter fetch runs again (its Job deleted, then applied anew).
ADAPTER_RETRY_S = 300.0

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
        """Enough of the body for an Event about it."""
        o = self.owner
        meta = {"name": o.name, "namespace": o.namespace, "uid": o.uid}
        return cast(kopf.Body, {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta})


class ModelStore:
    """The latest record of every served model, as kopf's events show it, and its spec parsed
    once per generation for the reconciler and the autoscaler alike."""

    #: How many uids of deleted models are remembered, to ignore their late events.
    GONE_LIMIT = 10_000

    def __init__(self) -> None:
        self._models: dict[Key, ModelRecord] = {}
        self._gone: dict[str, None] = {}  # insertion-ordered: the oldest is dropped first
        #: Per model, (uid, generation) and its spec parsed (or why it does not parse).
        self._specs: dict[Key, tuple[tuple[str, int], ModelSpec | InvalidSpec]] = {}

    def __len__(self) -> int:
        return len(self._models)

    def get(self, key: Key) -> ModelRecord | None:
        return self._models.get(key)

    def records(self) -> list[ModelRecord]:
        return list(self._models.values())

    def spec(self, record: ModelRecord) -> ModelSpec | InvalidSpec:
        """The record's spec, parsed once per model and generation: the spec of a generation
        never changes (the API server bumps it with every spec write, the scale included)."""
        version = (record.owner.uid, record.generation)
        cached = self._specs.get(record.key)
        if cached is not None and cached[0] == version:
            return cached[1]
        try:
            parsed: ModelSpec | InvalidSpec = parse_spec(record.spec)
        except InvalidSpec as error:
            parsed = error
        held = self._models.get(record.key)
        if held is not None and (held.owner.uid, held.generation) == version:
            self._specs[record.key] = (version, parsed)  # kept only while the model is served
        return parsed

    def observe(self, event_type: str | None, record: ModelRecord) -> bool:
        """Keep the latest record of a model; returns whether it needs a reconcile.

        Most events of a model are the echoes of its own status patches: same uid, same
        generation, nothing to do. kopf gives each object (uid) a worker of its own, so a
        model deleted and created again under its name is seen in either order: two objects
        never share a name at once, so a new uid means the held one is gone, and a uid once
        gone stays ignored.
        """
        uid = record.owner.uid
        if uid in self._gone:
            return False
        held = self._models.get(record.key)
        if event_type == "DELETED":
            self._bury(uid)
            if held is None or held.owner.uid != uid:
                return False
            self._drop(record.key)
            return True
        if held is not None and held.owner.uid != uid:
            self._bury(held.owner.uid)
        self._models[record.key] = record
        return held is None or (held.owner.uid, held.generation, held.deleting) != (
            uid,
            record.generation,
            record.deleting,
        )

    def gone(self, record: ModelRecord) -> None:
        """The model's status patch found no such object: take it as deleted, though kopf
        has not said so (its watch relists after "410 Gone" without reporting deletions)."""
        self._bury(record.owner.uid)
        held = self._models.get(record.key)
        if held is not None and held.owner.uid == record.owner.uid:
            self._drop(record.key)

    def _drop(self, key: Key) -> None:
        del self._models[key]
        self._specs.pop(key, None)

    def _bury(self, uid: str) -> None:
        self._gone[uid] = None
        if len(self._gone) > self.GONE_LIMIT:
            del self._gone[next(iter(self._gone))]


@dataclass(frozen=True)
class Written:
    """A child as this process last wrote it, to tell its own writes from someone else's."""

    uid: str
    generation: int
    resource_version: str
    at: float  # time.monotonic() of the write


@dataclass
class ServedAdapters:
    """What a ready pod's server last said of its adapters (its log), when that was read,
    and the manifest it had loaded completely: no need to read again until it changes."""

    said: dict[str, Served] | None = None
    read_at: float = 0.0
    all_loaded: str | None = None


@dataclass
class ModelState:
    """All this process remembers of one model (one uid) besides the caches."""

    uid: str
    #: The generation whose children were applied (or refused for good); 0: none yet.
    generation: int = 0
    #: The children wanted at `generation`, as (kind, name).
    desired: frozenset[tuple[str, str]] = frozenset()
    written: dict[tuple[str, str], Written] = field(default_factory=dict)
    #: The API server refused a child of `generation` for good: wait for a spec change.
    refused: bool = False
    failure: Problem | None = None
    #: The model generation `failure` was last announced for.
    failure_generation: int = 0
    #: The status last patched, so an unchanged one is not patched again.
    posted: dict[str, Any] | None = None
    #: The cache entry and commit the applied children were built with (None: no entry).
    weights: tuple[str, str] | None = None
    #: Uids of the children this process deleted, so a lagging watch does not delete again.
    pruned: set[str] = field(default_factory=set)
    #: The adapters manifest the applied children were built with.
    manifest: str | None = None
    served: ServedAdapters = field(default_factory=ServedAdapters)
    adapters: AdaptersState | None = None


class Verdict(enum.Enum):
    CURRENT = "current"
    #: Never written by this process, deleted, or changed by someone else: write it.
    STALE = "stale"
    #: Written, and the watch has not shown the write yet: its event will bring the model back.
    UNSEEN = "unseen"


def judge(
    kind: ChildKind, child: Child | None, written: Written | None, owner_uid: str, now: float
) -> Verdict:
    """Does this child, as the cache shows it, need writing again?"""
    if kind.create_only and child is not None and not child.deleted:
        # Never written over: only a deletion, or a namesake someone else made, matters.
        return Verdict.CURRENT if child.controller_uid == owner_uid else Verdict.STALE
    if written is None:
        return Verdict.STALE
    if child is None or (child.uid != written.uid and not child.deleted):
        # Not shown yet, or the cache still holds an older incarnation.
        return Verdict.UNSEEN if now - written.at < UNSEEN_WRITE_S else Verdict.STALE
    if child.deleted or not child.labelled or child.controller_uid != owner_uid:
        return Verdict.STALE
    if kind.drift is Drift.GENERATION and child.generation > written.generation:
        return Verdict.STALE  # a spec edit; an older generation is only the watch lagging
    if kind.drift is Drift.VERSION and child.resource_version != written.resource_version:
        return Verdict.STALE
    return Verdict.CURRENT


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


@dataclass(frozen=True)
class Shared:
    """What the reconciler and the autoscaler both work with (the controller wires it)."""

    settings: OperatorSettings
    client: KubeClient
    store: ModelStore
    cache: ChildCache
    #: Where Events about the models go.
    event: EventSink


class Reconciler:
    def __init__(
        self,
        shared: Shared,
        kinds: Iterable[ChildKind] = CHILD_KINDS,
        build: Build = desired_children,
        autoscaling: AutoscalingStatus = lambda key: None,
        weights: WeightsCache | None = None,
    ) -> None:
        self.settings, self.client = shared.settings, shared.client
        self.store, self.cache, self.event = shared.store, shared.cache, shared.event
        self.kinds = tuple(kinds)
        self.build = build
        self.autoscaling = autoscaling
        #: The model cache (None: every pod fetches its own weights, as with the cache off).
        self.weights = weights
        self.states: dict[Key, ModelState] = {}

    async def reconcile(self, key: Key) -> float | None:
        """Bring the model's children in line with its latest spec, then publish its status.

        Returns in how many seconds to look again (None: when something changes). An
        exception means "retry with backoff": the queue does that.
        """
        record = self.store.get(key)
        if record is None or record.deleting:
            self._forget(key)  # garbage collection takes the children
            return None
        state = self._state(record)
        spec = self.store.spec(record)
        again_s: float | None = None
        fresh: dict[str, object] = {}
        weights: Weights | None = None
        if isinstance(spec, InvalidSpec):
            self._fail(record, state, Problem("InvalidSpec", str(spec)))
            state.generation = record.generation  # nothing to apply until the spec changes
        else:
            weights, weights_s = await self._weights(record, spec)
            fetches, fetches_s = await self._fetches(record)
            converged_s = await self._converge(record, state, spec, fresh, weights, fetches)
            await self._prune(record, state)
            served_s = await self._served(record, state, spec, fetches)
            waits = (weights_s, fetches_s, converged_s, served_s)
            again_s = min((t for t in waits if t is not None), default=None)
        await self._publish(record, state, fresh, weights)
        return again_s

    def _state(self, record: ModelRecord) -> ModelState:
        state = self.states.get(record.key)
        if state is None or state.uid != record.owner.uid:  # a namesake starts afresh
            state = self.states[record.key] = ModelState(record.owner.uid)
        return state

    def _forget(self, key: Key) -> None:
        self.states.pop(key, None)
        self.cache.forget_deleted(key)
        if self.weights is not None:
            self.weights.forget(key)

    # 0. The weights.

    async def _weights(
        self, record: ModelRecord, spec: ModelSpec
    ) -> tuple[Weights | None, float | None]:
        """The model's cache entry, made sure of, and when to look at it again."""
        if self.weights is None:
            return None, None
        entry = entry_for(record.owner.namespace, spec, self.settings)
        state = await self.weights.ensure(record.key, entry)
        if entry is None or state is None:
            return None, None
        return Weights(entry, state), self.weights.again_in(state, entry)

    # 0'. The adapters' fetches.

    async def _fetches(self, record: ModelRecord) -> tuple[dict[str, FetchJobState], float | None]:
        """The model's adapter fetch Jobs, each finished one's outcome written on it (read
        once from its pod's termination message), a failed one deleted when its retry is
        due (the converge applies it anew); and when a retry will be due."""
        jobs: dict[str, FetchJobState] = {}
        for name, child in self.cache.children(ADAPTER_JOB, record.key).items():
            summary, ours = child.summary, child.controller_uid == record.owner.uid
            if ours and not child.deleted and isinstance(summary, FetchJobState):
                jobs[name] = summary
        again_s: float | None = None
        now = time.time()
        for name, job in list(jobs.items()):
            if (job.succeeded and not job.commit) or (job.failed and not job.error):
                jobs[name] = await self._record_fetch(record, name, job, now)
            elif job.failed:
                retry_at = _parse_time(job.retry_at)
                if retry_at is None or retry_at <= now:
                    await self.client.delete(ADAPTER_JOB, record.owner.namespace, name, job.uid)
                    del jobs[name]
                else:
                    again_s = min(again_s or retry_at - now, retry_at - now)
        return jobs, again_s

    async def _record_fetch(
        self, record: ModelRecord, name: str, job: FetchJobState, now: float
    ) -> FetchJobState:
        """Write what a finished fetch found on its Job: the commit, or the error and when
        to try again. Its pod says it (the download's last line, its termination message)."""
        path = POD.collection_path(record.owner.namespace)
        listed = await self.client.list(path, {"labelSelector": f"job-name={name}"})
        pods = [fetch_pod_state(item) for item in listed.get("items") or []]
        results = [p.result for p in pods if p.result]
        done = next((r for r in results if r.get("event") == "done" and r.get("commit")), None)
        annotations: dict[str, str]
        if job.succeeded:
            if done is None:
                return job  # the pod's termination message is not there yet
            annotations = {COMMIT: str(done["commit"])}
        else:
            failed = next((r for r in results if r.get("event") == "failed"), None)
            waiting = next((p.waiting for p in pods if p.waiting), "")
            said = str(failed.get("message")) if failed else waiting or "the fetch Job failed"
            retry_at = _format_time(now + ADAPTER_RETRY_S)
            annotations = {LAST_ERROR: f"{said[:900]}; trying again at {retry_at}"}
            annotations[RETRY_AT] = retry_at
        body = {"metadata": {"annotations": annotations}}
        namespace = record.owner.namespace
        stored = await self.client.merge_patch(ADAPTER_JOB, namespace, name, body)
        return adapters.fetch_job_state(stored)

    # 1. The children.

    async def _converge(
        self,
        record: ModelRecord,
        state: ModelState,
        spec: ModelSpec,
        fresh: dict[str, object],
        weights: Weights | None,
        fetches: Fetches,
    ) -> float | None:
        """Write what needs writing; returns when to look again for a write not seen yet."""
        built_with = weights.applied_as if weights is not None else None
        manifest = adapters.manifest_json(record.owner.name, spec, self.settings, fetches)
        new_generation = (
            state.generation != record.generation
            or state.weights != built_with
            or state.manifest != manifest
        )
        if not new_generation and state.refused:
            return None
        verdicts = {} if new_generation else self._judge_all(record, state)
        stale = {name for name, verdict in verdicts.items() if verdict is Verdict.STALE}
        if new_generation or stale:
            objs = self.build(record.owner, spec, self.settings, weights, fetches)
            wanted = {(obj["kind"], obj["metadata"]["name"]): obj for obj in objs}
            todo = list(wanted.values()) if new_generation else [wanted[n] for n in stale]
            try:
                await self._write(record, state, todo, fresh)
            except ApiError as error:
                self._fail(record, state, Problem("ApplyFailed", error.message))
                if not error.permanent:
                    # Say so, if the server listens.
                    await self._publish(record, state, fresh, weights)
                    raise
                state.refused = True
            else:
                state.refused, state.failure = False, None
            state.generation, state.desired = record.generation, frozenset(wanted)
            state.weights, state.manifest = built_with, manifest
        return UNSEEN_WRITE_S if Verdict.UNSEEN in verdicts.values() else None

    def _judge_all(self, record: ModelRecord, state: ModelState) -> dict[tuple[str, str], Verdict]:
        now = time.monotonic()
        verdicts = {}
        for kind_name, name in state.desired:
            kind = self._kind(kind_name)
            child = self.cache.children(kind, record.key).get(name)
            written = state.written.get((kind_name, name))
            verdicts[kind_name, name] = judge(kind, child, written, record.owner.uid, now)
        return verdicts

    async def _write(
        self, record: ModelRecord, state: ModelState, objs: list[Obj], fresh: dict[str, object]
    ) -> None:
        """Apply `objs` one after the other, in the builder's order (the NetworkPolicy, so
        that no pod runs unguarded, then the Deployment: under a burst every model's
        Deployment, which the rest of the rollout waits on, reaches the client's queue of
        writes before any Service or status patch); then the Created/Updated Event for what
        was written, also when one failed."""
        created, updated = [], []
        try:
            for obj in objs:
                kind, old = kind_of(obj, self.kinds), self._cached(record, obj)
                if kind.create_only and old is not None:
                    continue  # there already, and its spec cannot change
                new, stored = await self.client.apply(kind, obj)
                generation = self._written(state, kind, stored, fresh)
                if new:
                    created.append(kind.kind)
                elif kind.drift is Drift.GENERATION and old is not None and old != generation:
                    updated.append(f"{kind.kind} {obj['metadata']['name']}")
        finally:
            self._announce_writes(record, created, updated)

    def _written(
        self, state: ModelState, kind: ChildKind, stored: Obj, fresh: dict[str, object]
    ) -> int:
        """Remember a write (to tell it from someone else's); returns its generation."""
        meta = stored.get("metadata", {})
        generation = int(meta.get("generation", 0))
        state.written[kind.kind, str(meta.get("name"))] = Written(
            uid=str(meta.get("uid", "")),
            generation=generation,
            resource_version=str(meta.get("resourceVersion", "")),
            at=time.monotonic(),
        )
        if kind.summarise is not None:
            fresh[kind.kind] = kind.summarise(stored)  # newer than the watch's
        return generation

    def _cached(self, record: ModelRecord, obj: Obj) -> int | None:
        """The generation of the live child `obj` replaces, if the cache holds one."""
        child = self.cache.children(kind_of(obj, self.kinds), record.key).get(
            obj["metadata"]["name"]
        )
        return None if child is None or child.deleted else child.generation

    def _announce_writes(self, record: ModelRecord, created: list[str], updated: list[str]) -> None:
        name = record.owner.name
        if created:
            self._emit(record.ref, "Normal", "Created", f"created {_listed(created)} {name}")
        for what in updated:
            message = f"updated {what} to generation {record.generation}"
            self._emit(record.ref, "Normal", "Updated", message)

    # 2. Pruning.

    async def _prune(self, record: ModelRecord, state: ModelState) -> None:
        """Delete the model's own children that are no longer desired, where the kind allows.

        Owned means its controlling owner reference names this model's uid: a child that
        merely carries the model's labels (someone else's) is never touched.
        """
        if state.refused:
            return  # what is desired was not applied: keep what serves now
        for kind in self.kinds:
            if not kind.deleted:
                continue
            for name, child in list(self.cache.children(kind, record.key).items()):
                if child.deleted or child.uid in state.pruned or (kind.kind, name) in state.desired:
                    continue
                if child.controller_uid != record.owner.uid:
                    continue
                await self.client.delete(kind, record.owner.namespace, name, child.uid)
                state.pruned.add(child.uid)
                state.written.pop((kind.kind, name), None)
                message = f"deleted {kind.kind} {name}: no longer wanted"
                self._emit(record.ref, "Normal", "Deleted", message)

    # 2'. What the servers say of the adapters.

    async def _served(
        self, record: ModelRecord, state: ModelState, spec: ModelSpec, fetches: Fetches
    ) -> float | None:
        """Read a ready pod's last adapter states (its log) while the manifest is not all
        loaded, every few seconds; keep the `AdaptersReady` state. Returns when to look again."""
        name = record.owner.name
        manifest = adapters.manifest_json(name, spec, self.settings, fetches)
        served = state.served
        if not spec.adapters or manifest == served.all_loaded:
            served.said = served.said if spec.adapters else None
            state.adapters = adapters.adapters_state(
                name, spec, self.settings, fetches, served.said
            )
            return None
        pods = [p for p in self.cache.summaries(POD, record.key) if isinstance(p, PodState)]
        ready = [p.name for p in pods if p.ready and not p.terminating]
        again_s: float | None = None
        if ready:
            wait = served.read_at + ADAPTERS_EVERY_S - time.monotonic()
            if wait <= 0:
                served.read_at = time.monotonic()
                served.said = await self._read_served(record, ready[0])
                wait = ADAPTERS_EVERY_S
            again_s = wait
        else:
            served.said = None  # the pods that said it are gone
        state.adapters = adapters.adapters_state(name, spec, self.settings, fetches, served.said)
        if state.adapters is not None and state.adapters.ready:
            served.all_loaded = manifest
            again_s = None
        return again_s

    async def _read_served(self, record: ModelRecord, pod: str) -> dict[str, Served] | None:
        try:
            log = await self.client.log(record.owner.namespace, pod, "server", ADAPTERS_LOG_LINES)
        except ApiError as error:
            logger.debug("adapter states of %s: %s", pod, error)
            return None
        return adapters.served_states(log)

    # 3. The status.

    async def _publish(
        self,
        record: ModelRecord,
        state: ModelState,
        fresh: Mapping[str, object],
        weights: Weights | None = None,
    ) -> None:
        """Compute the status from the children and patch it if it changed."""
        previous = state.posted or dict(record.status)
        replicas, gpus = _desired(self.store.spec(record), record.spec)
        status = compute_status(
            owner=record.owner,
            desired=replicas,
            gpus=gpus,
            generation=state.generation or int(previous.get("observedGeneration", 0)),
            deployment=self._deployment(record.key, fresh),
            pods=[p for p in self.cache.summaries(POD, record.key) if isinstance(p, PodState)],
            failure=state.failure,
            previous=previous,
            now=_now(),
            autoscaling=self.autoscaling(record.key),
            weights=weights,
            adapters=state.adapters,
        )
        if status == previous:
            return
        try:
            await self.client.patch_status(record.owner.namespace, record.owner.name, status)
        except ApiError as error:
            if error.status == 404:
                self.store.gone(record)  # garbage collection takes the children
                self.states.pop(record.key, None)
                return
            if error.permanent:
                logger.warning("status of %s/%s refused: %s", *record.key, error)
                return
            raise
        state.posted = status
        self._announce(record, previous, status)

    def _deployment(self, key: Key, fresh: Mapping[str, object]) -> DeploymentState | None:
        candidates = [fresh.get(DEPLOYMENT.kind), *self.cache.summaries(DEPLOYMENT, key)]
        return next((d for d in candidates if isinstance(d, DeploymentState)), None)

    # Events.

    def _fail(self, record: ModelRecord, state: ModelState, problem: Problem) -> None:
        """Remember the problem for the status; say so once per problem and generation (a
        retry that fails alike says nothing new)."""
        if problem != state.failure or state.failure_generation != record.generation:
            self._emit(record.ref, "Warning", "Failed", f"{problem.reason}: {problem.message}")
        state.failure, state.failure_generation = problem, record.generation

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

    def _emit(self, resource: kopf.Body, type: str, reason: str, message: str) -> None:
        """Post an Event, and log it: what happened to a model, in `kubectl describe` and
        in the operator's log alike."""
        meta = resource["metadata"]
        level = logging.INFO if type == "Normal" else logging.WARNING
        logger.log(level, "%s/%s: %s: %s", meta["namespace"], meta["name"], reason, message)
        self.event(resource, type, reason, message)

    def _kind(self, name: str) -> ChildKind:
        return next(kind for kind in self.kinds if kind.kind == name)


def _desired(spec: ModelSpec | InvalidSpec, raw_spec: Mapping[str, Any]) -> tuple[int, int]:
    """Replicas and GPUs, also for a spec that does not parse (status still has to say so)."""
    if isinstance(spec, ModelSpec):
        return spec.replicas, spec.gpus
    gpus = raw_spec.get("gpus", 0)
    return declared_replicas(raw_spec), gpus if isinstance(gpus, int) else 0


def _listed(words: list[str]) -> str:
    """Words as a sentence lists them: A; A and B; A, B and C."""
    return " and ".join([", ".join(words[:-1]), words[-1]] if len(words) > 1 else words)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _format_time(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> float | None:
    try:
        parsed = datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        return None
    return parsed.replace(tzinfo=datetime.UTC).timestamp()


def _condition(status: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), {})
