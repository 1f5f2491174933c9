"""Which pods serve which model, how busy each is, and waiting for a model that has none.

Models are keyed by (namespace, name). The table is fed by a source: `ClusterSource`
(the models and their EndpointSlices, watched) or `StaticSource` (fixed URLs whose
`/readyz` is probed). The proxy resolves the name a request sends and asks for the
least-busy ready endpoint, which may mean holding the request while the model starts:
at zero, the first held request wakes the model once (the `waker`: "scale to one
replica"); the rest of a burst only wait. A model at zero without spec.autoscaling is
not woken: someone wants it off.

A model may have LoRA adapters (spec.adapters), named by clients as MODEL/ADAPTER, as vLLM
and KubeAI name them. Since NAMESPACE/NAME has the same shape, a name is read every way
it can be (`readings`) and must mean exactly one model, or one adapter of one model;
NAMESPACE/MODEL/ADAPTER says both at once.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable, Collection, Coroutine, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

log = logging.getLogger(__name__)

#: A model by (namespace, name); the static table's namespace is "".
Key = tuple[str, str]
Waker = Callable[["Model"], Coroutine[Any, Any, None]]


class ModelState(StrEnum):
    READY = "Ready"  # at least one pod answers
    STARTING = "Starting"  # pods exist (or were asked for), none ready yet
    SCALED_TO_ZERO = "ScaledToZero"  # no pod: the next request wakes it


class GatewayError(Exception):
    """An error the gateway answers itself: its status, message and extra headers."""

    status = 500

    def __init__(self, details: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(details)
        self.details = details
        self.headers = dict(headers or {})


class UnknownModel(GatewayError):
    status = 404


class AmbiguousModel(GatewayError):
    """A bare name served in more than one watched namespace."""

    status = 400


class NotReadyInTime(GatewayError):
    """Held for the whole hold timeout, or more held requests than the cap: 503."""

    status = 503


class ScaledDownByHand(GatewayError):
    """At zero replicas without spec.autoscaling: someone wants it off; not woken."""

    status = 503


@dataclass(eq=False)
class Endpoint:
    url: str
    ready: bool = False
    in_flight: int = 0


@dataclass(eq=False)
class Model:
    namespace: str
    name: str
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    #: spec.replicas as last seen; None where nobody says (the static table).
    replicas: int | None = None
    #: Has spec.autoscaling: the gateway may wake it from zero.
    autoscaling: bool = True
    #: metadata.resourceVersion of the spec above: a wake applies to that version only.
    version: str = ""
    #: What a client may ask of it (the catalogue's rules for spec.model, the side multiple
    #: among them); None where nobody says (the static table).
    rules: dict[str, object] | None = None
    #: The names of its adapters (spec.adapters), each routed to the model's pods.
    adapters: tuple[str, ...] = ()
    held: int = 0
    waking: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    @property
    def label(self) -> str:
        """NAMESPACE/NAME, or the bare name where there are no namespaces."""
        return f"{self.namespace}/{self.name}" if self.namespace else self.name

    def ready(self, exclude: Collection[str] = ()) -> list[Endpoint]:
        return [e for e in self.endpoints.values() if e.ready and e.url not in exclude]

    @property
    def at_zero(self) -> bool:
        return self.replicas == 0

    @property
    def state(self) -> ModelState:
        if self.ready():
            return ModelState.READY
        if self.endpoints or self.waking or (self.replicas or 0) > 0:
            return ModelState.STARTING
        return ModelState.SCALED_TO_ZERO

    def notify(self) -> None:
        """Wake every waiter; later waiters wait on a fresh event."""
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass(frozen=True)
class Reading:
    """One way to read a requested name: a model (in a namespace, or any) and an adapter."""

    namespace: str | None
    name: str
    adapter: str | None = None


def readings(requested: str) -> list[Reading]:
    """Every way `requested` can be read: NAME; NAMESPACE/NAME or MODEL/ADAPTER;
    NAMESPACE/MODEL/ADAPTER."""
    parts = requested.split("/")
    if not all(parts):
        return []
    if len(parts) == 1:
        return [Reading(None, parts[0])]
    if len(parts) == 2:
        return [Reading(parts[0], parts[1]), Reading(None, parts[0], parts[1])]
    if len(parts) == 3:
        return [Reading(parts[0], parts[1], parts[2])]
    return []


@dataclass(frozen=True)
class Target:
    """What a request goes to: a model, and the adapter of it that the request names."""

    model: Model
    adapter: str | None = None

    @property
    def upstream_name(self) -> str:
        """The name the model's pods know it by: the bare name, with its adapter."""
        name = self.model.name
        return f"{name}/{self.adapter}" if self.adapter else name

    @property
    def label(self) -> str:
        return f"{self.model.label}/{self.adapter}" if self.adapter else self.model.label


def only(requested: str, found: list[Target]) -> Target:
    """The one target of `found`, or `AmbiguousModel` naming them all."""
    if len(found) > 1:
        where = " and ".join(sorted(target.label for target in found))
        raise AmbiguousModel(
            f"model: {requested!r} is ambiguous ({where}); name one as NAMESPACE/NAME"
            + ("/ADAPTER" if any(target.adapter for target in found) else "")
        )
    return found[0]


@dataclass(frozen=True)
class HoldPolicy:
    timeout: float  # seconds a request may wait for a ready endpoint
    max_held: int  # requests waiting per model; more get 503 at once
    retry_after: int  # seconds, told to clients on a 503


class EndpointTable:
    def __init__(self, policy: HoldPolicy, waker: Waker | None = None) -> None:
        self.policy = policy
        self.waker = waker
        self.models: dict[Key, Model] = {}
        self.synced = False  # the source has filled the table once (readiness)
        self._turn = itertools.count()

    # -- fed by a source ---------------------------------------------------------------

    def set_model(self, key: Key, urls: Collection[str]) -> None:
        """The model's endpoints are now `urls`; known ones keep their state and counts."""
        model = self._known(key)
        old = model.endpoints
        model.endpoints = {url: old.get(url) or Endpoint(url) for url in urls}
        model.notify()

    def set_endpoints(self, key: Key, readiness: Mapping[str, bool]) -> None:
        """The model's endpoints and whether each is ready, all at once (from its slices)."""
        self.set_model(key, readiness)
        for url, ready in readiness.items():
            self.set_ready(key, url, ready)

    def set_scale(
        self,
        key: Key,
        replicas: int,
        autoscaling: bool,
        version: str = "",
        *,
        rules: dict[str, object] | None = None,
        adapters: tuple[str, ...] = (),
    ) -> None:
        """What the model's spec (at `version`) says about its replicas, what a client
        may ask of its backend, and its adapters."""
        model = self._known(key)
        if model.replicas != 0 and replicas == 0:
            model.waking = False  # scaled down again: a new cold period begins
        model.replicas, model.autoscaling, model.version = replicas, autoscaling, version
        model.rules, model.adapters = rules, adapters
        model.notify()

    def remove_model(self, key: Key) -> None:
        model = self.models.pop(key, None)
        if model is not None:
            model.notify()

    def set_ready(self, key: Key, url: str, ready: bool) -> None:
        model = self.models.get(key)
        endpoint = model.endpoints.get(url) if model else None
        if model is None or endpoint is None or endpoint.ready == ready:
            return
        endpoint.ready = ready
        if ready:
            model.waking = False
        model.notify()

    def _known(self, key: Key) -> Model:
        model = self.models.get(key)
        if model is None:
            model = self.models[key] = Model(*key)
        return model

    # -- used by the proxy -------------------------------------------------------------

    def candidates(self, requested: str) -> list[Target]:
        """The models, or adapters of models, a request's name may mean: a bare name means
        every model of that name, whatever its namespace (see `readings`)."""
        return [target for reading in readings(requested) for target in self.matching(reading)]

    def matching(self, reading: Reading) -> list[Target]:
        if reading.namespace is not None:
            model = self.models.get((reading.namespace, reading.name))
            models = [model] if model is not None else []
        else:
            models = [m for m in self.models.values() if m.name == reading.name]
        adapter = reading.adapter
        return [Target(m, adapter) for m in models if adapter is None or adapter in m.adapters]

    def resolve(self, requested: str) -> Target:
        """The model or adapter a request names: NAME, NAMESPACE/NAME, MODEL/ADAPTER or
        NAMESPACE/MODEL/ADAPTER, meaning exactly one."""
        found = self.candidates(requested)
        if not found:
            known = ", ".join(sorted(m.label for m in self.models.values())) or "none"
            raise UnknownModel(
                self.missing_adapter(requested, self.models.values())
                or f"model: {requested!r} is not served here; known models: {known}"
            )
        return only(requested, found)

    def missing_adapter(self, requested: str, visible: Collection[Model]) -> str | None:
        """Where `requested` names a model of `visible` with an adapter it does not have:
        why, listing the adapters it has."""
        for reading in readings(requested):
            if reading.adapter is None:
                continue
            for target in self.matching(Reading(reading.namespace, reading.name)):
                if target.model in visible:
                    have = ", ".join(target.model.adapters) or "none"
                    return (
                        f"model: {requested!r}: {target.model.label} has no adapter "
                        f"{reading.adapter!r}; its adapters: {have}"
                    )
        return None

    @asynccontextmanager
    async def acquire(
        self, model: Model, deadline: float, exclude: Collection[str] = ()
    ) -> AsyncIterator[Endpoint]:
        """The least-busy ready endpoint of `model`, counted busy while the block runs.

        Holds until one is ready or `deadline` (time.monotonic()) passes.
        """
        endpoint = await self._wait_for_endpoint(model, deadline, exclude)
        endpoint.in_flight += 1
        try:
            yield endpoint
        finally:
            endpoint.in_flight -= 1

    async def _wait_for_endpoint(
        self, model: Model, deadline: float, exclude: Collection[str]
    ) -> Endpoint:
        ready = model.ready(exclude)
        if ready:
            return self._least_busy(ready)
        if model.held >= self.policy.max_held:
            raise self._not_ready(model, f"{model.held} requests are already waiting for it")
        model.held += 1
        try:
            while not (ready := model.ready(exclude)):
                if self.models.get(model.key) is not model:
                    raise self._not_ready(model, "it was removed")
                if model.at_zero and not model.autoscaling:
                    raise ScaledDownByHand(
                        f"model: {model.label!r} is scaled to zero (spec.replicas: 0) and has "
                        "no spec.autoscaling, so the gateway does not wake it; scale it up"
                    )
                self._wake(model)
                await self._wait_change(model, deadline)
            return self._least_busy(ready)
        finally:
            model.held -= 1

    async def _wait_change(self, model: Model, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise self._not_ready(model, f"no pod became ready within {self.policy.timeout:g} s")
        try:
            await asyncio.wait_for(model.changed.wait(), remaining)
        except TimeoutError:
            raise self._not_ready(
                model, f"no pod became ready within {self.policy.timeout:g} s"
            ) from None

    def _wake(self, model: Model) -> None:
        """Ask for a pod once per cold period, however many requests arrive meanwhile.

        A model with replicas asked for (spec.replicas > 0) is starting already: only wait.
        """
        if model.waking or (model.replicas or 0) > 0:
            return
        model.waking = True
        log.info("model %s has no ready pod: holding requests and waking it", model.label)
        if self.waker is not None:
            task = asyncio.get_running_loop().create_task(self.waker(model))
            task.add_done_callback(lambda done: _wake_failed(model, done))

    def _least_busy(self, ready: list[Endpoint]) -> Endpoint:
        # Start the scan at a rotating place so that ties spread over the endpoints.
        start = next(self._turn) % len(ready)
        return min(ready[start:] + ready[:start], key=lambda e: e.in_flight)

    def _not_ready(self, model: Model, why: str) -> NotReadyInTime:
        retry = {"Retry-After": str(self.policy.retry_after)}
        return NotReadyInTime(f"model: {model.label!r} is starting ({why}); retry later", retry)


def _wake_failed(model: Model, task: asyncio.Task[None]) -> None:
    """A wake that failed leaves the cold period open: held requests try again at the
    model's next change (a wake refused because the model changed meanwhile has one on
    its way), new requests at once."""
    if task.cancelled() or task.exception() is None:
        return
    log.warning("waking model %s failed: %s", model.label, task.exception())
    model.waking = False
