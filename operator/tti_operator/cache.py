"""The model cache at work: its entries watched, created, filled, retried and collected.

A model's reconcile asks `WeightsCache.ensure` for its entry (see `weights`): the claim is
applied if it is not there, the fetch Job if the claim holds no commit yet, and the answer
is the entry's `WeightsState`. What the Job found is written on the claim itself (its
annotations: the commit, or the last error with the time of the next try), so it outlives
the Job, which is deleted once read, and an operator restarted reads it back from the
watch. The claims, the Jobs and their pods are watched like the models' children; a change
to an entry sends every model that names it back to the queue.

A failed fetch is tried again after `weights.RETRY_DELAYS_S` (doubling, up to 30 minutes):
a token added to its Secret, a repository made public or a hub back online heal by
themselves. A claim no model names is marked with the time, and deleted once it has been
unused for `cache_retention_s`: a model deleted and created again within that time finds
its weights where they were.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from tti_kube.client import ApiError, KubeClient
from tti_kube.watch import list_and_watch
from tti_operator.kinds import CLAIM, FETCH_JOB, FETCH_POD, ChildKind
from tti_operator.ownership import MANAGED_BY, MANAGED_BY_LABEL
from tti_operator.settings import OperatorSettings
from tti_operator.spec import SecretKeyRef
from tti_operator.weights import (
    BYTES,
    COMMIT,
    ENTRY_LABEL,
    FAILURES,
    LAST_ERROR,
    RETRY_AT,
    RETRY_DELAYS_S,
    UNUSED_SINCE,
    ClaimState,
    Entry,
    FetchPodState,
    JobState,
    WeightsState,
    build_claim,
    build_fetch_job,
    claim_state,
    fetch_pod_state,
    job_state,
    weights_state,
)

Obj = dict[str, Any]
#: A model, and a cache entry, by (namespace, name).
Key = tuple[str, str]

SELECTOR = f"{MANAGED_BY_LABEL}={MANAGED_BY},{ENTRY_LABEL}"
#: Seconds between two reads of a running fetch's progress (its pod's last log lines).
PROGRESS_EVERY_S = 5.0
#: Seconds between two looks for unused entries; the first waits as long, so that every
#: model has been reconciled once (and named its entry) after a restart.
SWEEP_EVERY_S = 60.0

logger = logging.getLogger(__name__)


@dataclass
class EntryView:
    """What the watches show of one entry, and who names it."""

    claim: ClaimState | None = None
    job: JobState | None = None
    pods: dict[str, FetchPodState] = field(default_factory=dict)
    progress: Mapping[str, Any] | None = None
    progress_read: float = 0.0
    users: set[Key] = field(default_factory=set)
    #: The token Secret each user names, if any: a fetch uses one of them (a gated
    #: repository opens for all once any model of the entry brings a token).
    tokens: dict[Key, SecretKeyRef] = field(default_factory=dict)


class WeightsCache:
    def __init__(
        self,
        client: KubeClient,
        settings: OperatorSettings,
        on_change: Callable[[Key], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.settings = settings
        self.on_change = on_change
        self.clock = clock
        self.views: dict[Key, EntryView] = {}
        #: The entry each model named at its last reconcile.
        self.named: dict[Key, Key] = {}
        self._tasks: list[asyncio.Task[None]] = []

    # -- asked by a model's reconcile ---------------------------------------------------

    async def ensure(self, model: Key, entry: Entry | None) -> WeightsState | None:
        """Make sure the model's entry exists and is being filled; say where it stands."""
        self._name(model, entry)
        if entry is None:
            return None
        view = self.views.setdefault((entry.namespace, entry.name), EntryView())
        view.users.add(model)
        if entry.token is not None:
            view.tokens[model] = entry.token
        else:
            view.tokens.pop(model, None)
        if view.claim is None:
            _, stored = await self.client.apply(CLAIM, build_claim(entry))
            view.claim = claim_state(stored)
        claim = view.claim
        if not claim.commit:
            await self._fill(entry, view, claim)
        return weights_state(entry, view.claim, view.job, list(view.pods.values()), view.progress)

    def forget(self, model: Key) -> None:
        """The model is gone: it names no entry any more."""
        self._name(model, None)

    def again_in(self, state: WeightsState | None, entry: Entry | None) -> float | None:
        """When the model should look again without an event: progress to report, a retry due."""
        if state is None or entry is None or state.ready:
            return None
        if state.reason == "Downloading":
            return PROGRESS_EVERY_S
        claim = self.views[(entry.namespace, entry.name)].claim
        retry_at = _parse_time(claim.annotations.get(RETRY_AT, "")) if claim else None
        return max(1.0, retry_at - self.clock()) if retry_at is not None else None

    def _name(self, model: Key, entry: Entry | None) -> None:
        key = (entry.namespace, entry.name) if entry is not None else None
        before = self.named.pop(model, None)
        if before is not None and before != key and before in self.views:
            self.views[before].users.discard(model)
            self.views[before].tokens.pop(model, None)
        if key is not None:
            self.named[model] = key

    async def _fill(self, entry: Entry, view: EntryView, claim: ClaimState) -> None:
        job = view.job
        if job is None:
            retry_at = _parse_time(claim.annotations.get(RETRY_AT, ""))
            if retry_at is None or retry_at <= self.clock():
                token = next(iter(view.tokens.values()), None)
                fetch = build_fetch_job(replace(entry, token=token), claim.uid, self.settings)
                _, stored = await self.client.apply(FETCH_JOB, fetch)
                view.job = job_state(stored)
        elif job.succeeded:
            await self._record_success(entry, view, job)
        elif job.failed:
            await self._record_failure(entry, view, job, claim)
        elif job.active and self.clock() - view.progress_read >= PROGRESS_EVERY_S:
            view.progress_read = self.clock()
            view.progress = await self._progress(entry, view) or view.progress

    async def _record_success(self, entry: Entry, view: EntryView, job: JobState) -> None:
        done = _result(view, "done")
        if done is None:
            return  # the pod's termination message is not in the watch yet
        annotations = {COMMIT: str(done["commit"]), BYTES: str(done.get("bytes_total", ""))}
        await self._annotate(
            entry.namespace,
            entry.name,
            {**annotations, FAILURES: None, RETRY_AT: None, LAST_ERROR: None},
        )
        what = f"{entry.namespace}/{entry.name}: {entry.repo}@{entry.revision}"
        logger.info("%s: cached at %s", what, done["commit"])
        await self._drop_job(entry, view, job)

    async def _record_failure(
        self, entry: Entry, view: EntryView, job: JobState, claim: ClaimState
    ) -> None:
        failed = _result(view, "failed")
        waiting = next((p.waiting for p in view.pods.values() if p.waiting), "")
        message = str(failed["message"]) if failed else waiting or "the fetch Job failed"
        failures = claim.failures + 1
        delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S)) - 1]
        retry_at = _format_time(self.clock() + delay)
        await self._annotate(
            entry.namespace,
            entry.name,
            {FAILURES: str(failures), RETRY_AT: retry_at, LAST_ERROR: message[:1000]},
        )
        what = f"{entry.namespace}/{entry.name}: fetching {entry.repo}@{entry.revision}"
        logger.warning("%s failed (%d): %s; again at %s", what, failures, message, retry_at)
        await self._drop_job(entry, view, job)

    async def _drop_job(self, entry: Entry, view: EntryView, job: JobState) -> None:
        await self.client.delete(FETCH_JOB, entry.namespace, entry.name, job.uid)
        view.job, view.pods, view.progress = None, {}, None

    async def _progress(self, entry: Entry, view: EntryView) -> Mapping[str, Any] | None:
        """The running fetch's last progress line, from its pod's log."""
        running = [p.name for p in view.pods.values() if p.phase == "Running"]
        if not running:
            return None
        try:
            text = await self.client.log(entry.namespace, running[0], "fetch", tail_lines=5)
        except ApiError as error:
            logger.debug("progress of %s: %s", entry.name, error)
            return None
        for line in reversed(text.splitlines()):
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and event.get("event") == "progress":
                return event
        return None

    # -- garbage collection -------------------------------------------------------------

    async def sweep(self) -> None:
        """Mark the entries no model names, unmark those named again, delete the expired."""
        now = self.clock()
        for (namespace, name), view in list(self.views.items()):
            claim = view.claim
            if claim is None:
                continue
            since = _parse_time(claim.annotations.get(UNUSED_SINCE, ""))
            try:
                if view.users and since is not None:
                    await self._annotate(namespace, name, {UNUSED_SINCE: None})
                elif not view.users and since is None:
                    await self._annotate(namespace, name, {UNUSED_SINCE: _format_time(now)})
                elif not view.users and since is not None and self._expired(since, now):
                    unused = claim.annotations[UNUSED_SINCE]
                    logger.info("%s/%s: unused since %s: deleted", namespace, name, unused)
                    await self.client.delete(CLAIM, namespace, name, claim.uid)
            except ApiError as error:
                logger.warning("cache entry %s/%s: %s", namespace, name, error)

    def _expired(self, since: float, now: float) -> bool:
        retention = self.settings.cache_retention_s
        return retention > 0 and now - since >= retention

    async def _annotate(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        body = {"metadata": {"annotations": dict(annotations)}}
        stored = await self.client.merge_patch(CLAIM, namespace, name, body)
        self.views[(namespace, name)].claim = claim_state(stored)

    async def _sweep_forever(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            await self.sweep()

    # -- the watches --------------------------------------------------------------------

    def start(self, namespaces: Iterable[str]) -> None:
        """Start the watches and the sweep (idempotent)."""
        if self._tasks:
            return
        served: list[str | None] = list(namespaces) or [None]
        params = {"labelSelector": SELECTOR}
        for kind in (CLAIM, FETCH_JOB, FETCH_POD):
            for namespace in served:
                sink = _EntrySink(self, kind, namespace)
                watch = list_and_watch(self.client, kind.collection_path(namespace), params, sink)
                self._tasks.append(asyncio.create_task(watch, name=f"watch {kind.plural}"))
        self._tasks.append(asyncio.create_task(self._sweep_forever(), name="cache sweep"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def observe(self, kind: ChildKind, event_type: str, obj: Mapping[str, Any]) -> None:
        """Keep what one event shows of an entry's object; send its users back to the queue."""
        meta = obj.get("metadata") or {}
        name = (meta.get("labels") or {}).get(ENTRY_LABEL)
        if not name or not meta.get("namespace"):
            return
        key = (str(meta["namespace"]), str(name))
        view = self.views.setdefault(key, EntryView())
        gone = event_type == "DELETED"
        if kind is CLAIM:
            view.claim = None if gone else claim_state(obj)
        elif kind is FETCH_JOB:
            view.job = None if gone else job_state(obj)
        elif gone:
            view.pods.pop(str(meta.get("name", "")), None)
        else:
            pod = fetch_pod_state(obj)
            view.pods[pod.name] = pod
        for model in view.users:
            self.on_change(model)


class _EntrySink:
    """One kind's watch in one namespace (None: all), into the cache's views."""

    def __init__(self, cache: WeightsCache, kind: ChildKind, namespace: str | None) -> None:
        self.cache, self.kind, self.namespace = cache, kind, namespace

    def listed(self, items: list[Obj]) -> None:
        listed = {_entry_key(item) for item in items}
        for key, view in self.cache.views.items():
            if (self.namespace is None or key[0] == self.namespace) and key not in listed:
                _clear(view, self.kind)
        for item in items:
            self.cache.observe(self.kind, "ADDED", item)

    def event(self, event_type: str, obj: Obj) -> None:
        self.cache.observe(self.kind, event_type, obj)


def _entry_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace", "")), str((meta.get("labels") or {}).get(ENTRY_LABEL, "")))


def _clear(view: EntryView, kind: ChildKind) -> None:
    if kind is CLAIM:
        view.claim = None
    elif kind is FETCH_JOB:
        view.job = None
    else:
        view.pods = {}


def _result(view: EntryView, event: str) -> Mapping[str, Any] | None:
    return next(
        (p.result for p in view.pods.values() if p.result and p.result.get("event") == event), None
    )


def _format_time(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str) -> float | None:
    try:
        return (
            datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ")
            .replace(tzinfo=datetime.UTC)
            .timestamp()
        )
    except ValueError:
        return None
