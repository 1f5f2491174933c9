"""Which pods serve which model, how busy each is, and waiting for a model that has none.

The table is fed by a source (`StaticSource` here: a fixed list of URLs whose `/readyz`
is probed; an operator-fed source will call the same `set_model` / `set_ready`). The
proxy only asks it for the least-busy ready endpoint of a model, which may mean holding
the request while the model starts: the first held request wakes the model once (the
`waker`, e.g. "scale to one replica"); the rest of a burst only wait.
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

Waker = Callable[[str], Coroutine[Any, Any, None]]


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


class NotReadyInTime(GatewayError):
    """Held for the whole hold timeout, or more held requests than the cap: 503."""

    status = 503


@dataclass(eq=False)
class Endpoint:
    url: str
    ready: bool = False
    in_flight: int = 0


@dataclass(eq=False)
class Model:
    name: str
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    held: int = 0
    waking: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def ready(self, exclude: Collection[str] = ()) -> list[Endpoint]:
        return [e for e in self.endpoints.values() if e.ready and e.url not in exclude]

    @property
    def state(self) -> ModelState:
        if self.ready():
            return ModelState.READY
        if self.endpoints or self.waking:
            return ModelState.STARTING
        return ModelState.SCALED_TO_ZERO

    def notify(self) -> None:
        """Wake every waiter; later waiters wait on a fresh event."""
        self.changed.set()
        self.changed = asyncio.Event()


@dataclass(frozen=True)
class HoldPolicy:
    timeout: float  # seconds a request may wait for a ready endpoint
    max_held: int  # requests waiting per model; more get 503 at once
    retry_after: int  # seconds, told to clients on a 503


class EndpointTable:
    def __init__(self, policy: HoldPolicy, waker: Waker | None = None) -> None:
        self.policy = policy
        self.waker = waker
        self.models: dict[str, Model] = {}
        self.synced = False  # the source has filled the table once (readiness)
        self._turn = itertools.count()

    # -- fed by a source ---------------------------------------------------------------

    def set_model(self, name: str, urls: Collection[str]) -> None:
        """The model's endpoints are now `urls`; known ones keep their state and counts."""
        model = self.models.setdefault(name, Model(name))
        old = model.endpoints
        model.endpoints = {url: old.get(url) or Endpoint(url) for url in urls}
        model.notify()

    def remove_model(self, name: str) -> None:
        model = self.models.pop(name, None)
        if model is not None:
            model.notify()

    def set_ready(self, name: str, url: str, ready: bool) -> None:
        model = self.models.get(name)
        endpoint = model.endpoints.get(url) if model else None
        if model is None or endpoint is None or endpoint.ready == ready:
            return
        endpoint.ready = ready
        if ready:
            model.waking = False
        model.notify()

    # -- used by the proxy -------------------------------------------------------------

    @asynccontextmanager
    async def acquire(
        self, name: str, deadline: float, exclude: Collection[str] = ()
    ) -> AsyncIterator[Endpoint]:
        """The least-busy ready endpoint of `name`, counted busy while the block runs.

        Holds until one is ready or `deadline` (time.monotonic()) passes.
        """
        endpoint = await self._wait_for_endpoint(self._model(name), deadline, exclude)
        endpoint.in_flight += 1
        try:
            yield endpoint
        finally:
            endpoint.in_flight -= 1

    def _model(self, name: str) -> Model:
        model = self.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.models)) or "none"
            raise UnknownModel(f"model: {name!r} is not served here; known models: {known}")
        return model

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
            self._wake(model)
            while not (ready := model.ready(exclude)):
                if model.name not in self.models:
                    raise self._not_ready(model, "it was removed")
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
        """Ask for a pod once per cold period, however many requests arrive meanwhile."""
        if model.waking or model.ready():
            return
        model.waking = True
        log.info("model %s has no ready pod: holding requests and waking it", model.name)
        if self.waker is not None:
            task = asyncio.get_running_loop().create_task(self.waker(model.name))
            task.add_done_callback(_log_failure)

    def _least_busy(self, ready: list[Endpoint]) -> Endpoint:
        # Start the scan at a rotating place so that ties spread over the endpoints.
        start = next(self._turn) % len(ready)
        return min(ready[start:] + ready[:start], key=lambda e: e.in_flight)

    def _not_ready(self, model: Model, why: str) -> NotReadyInTime:
        retry = {"Retry-After": str(self.policy.retry_after)}
        return NotReadyInTime(f"model: {model.name!r} is starting ({why}); retry later", retry)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("waking a model failed: %r", task.exception())
