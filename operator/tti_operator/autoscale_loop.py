"""The autoscaler's loop: every interval, read each autoscaled model's load, decide, scale.

Per tick: one scrape of the gateway's `/metrics` (requests it holds per model), then for
every model with `spec.autoscaling`, concurrently, a scrape of each of its ready pods'
`/metrics` (`tti_request_load_seconds_total`: its increase over the interval is the mean
number of requests in flight or queued), the decision (`autoscale_policy.decide`), a patch
of the model's scale subresource when the count changes (the reconcile then rolls the
Deployment, as for an HPA) and an Event. The status has one writer, the reconciler: the
loop leaves the decision in the model's `ModelScaling` and enqueues the model's key.

What the loop remembers is one `ModelScaling` per autoscaled model and one `Endpoint` per
`/metrics` URL it scrapes; a model gone or no longer autoscaled, and a URL no longer
scraped, are forgotten whole. The spec comes parsed from the `ModelStore`, once per
generation, shared with the reconciler.

A pod or gateway that does not answer makes the load incomplete: logged once, never a
reason to scale down. Models without `spec.autoscaling` are never looked at.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tti_contracts import metrics as names
from tti_contracts.api import declared_replicas
from tti_kube.client import ApiError
from tti_operator.autoscale_policy import Decision, History, Load, decide
from tti_operator.informer import Key
from tti_operator.kinds import POD
from tti_operator.reconciler import ModelRecord, Shared
from tti_operator.spec import Autoscaling, ModelSpec
from tti_operator.status import PodState

LOAD_METRIC = names.sample_name(names.REQUEST_LOAD)
IN_FLIGHT_METRIC = names.IN_FLIGHT
HELD_METRIC = names.GATEWAY_HELD
#: Seconds the autoscaler trusts its own scale write over a watch that has not shown it yet.
ECHO_WAIT_S = 30.0
#: A status that says the same decision with another load is published at most this often
#: (the HPA's sync period): the load moves every tick, and each publish is an API write.
STATUS_REFRESH_S = 15.0
#: The parts of `status.autoscaling` that move with every tick, not with the decision.
_MOVING = ("load", "reason")

#: The URL of a ready pod's `/metrics`; the settings' template by default, injectable so a
#: test can point simulated pods at real servers.
MetricsUrl = Callable[[PodState], str]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One scrape of a server: its load integral and instant count, and when."""

    load_seconds: float
    in_flight: float
    at: float


@dataclass(frozen=True)
class Written:
    """A scale the autoscaler wrote, until the model's watch shows it."""

    before: int
    after: int
    at: float


@dataclass
class ModelScaling:
    """All the loop remembers of one autoscaled model (one uid: a namesake starts afresh)."""

    uid: str
    #: What the policy remembers between decisions.
    history: History = field(default_factory=History)
    #: Its last scale write, until the model's watch shows it.
    written: Written | None = None
    #: `lastScaleTime`: when it last scaled the model.
    scaled_at: str | None = None
    #: What the reconciler publishes as `status.autoscaling` (None: nothing decided yet).
    status: dict[str, Any] | None = None
    #: When `status` was last handed to the reconciler (monotonic seconds).
    published_at: float = -math.inf

    def replicas(self, observed: int, now: float) -> int:
        """The model's replicas: `observed` (its spec's), or the loop's own write while the
        watch has not shown it yet (the write is not someone else's scale)."""
        written = self.written
        if written is None or now - written.at > ECHO_WAIT_S or observed != written.before:
            self.written = None
            return observed
        return written.after

    def publish(self, status: dict[str, Any], now: float) -> bool:
        """Take `status` as the one to publish, and say so: at once when the decision in it
        changed, else (only the load moved) at most every STATUS_REFRESH_S."""
        before = self.status or {}
        changed = _decided(status) != _decided(before)
        due = now - self.published_at >= STATUS_REFRESH_S
        if not (changed or (status != before and due)):
            return False
        self.status, self.published_at = status, now
        return True


@dataclass
class Endpoint:
    """What the loop remembers of one `/metrics` URL."""

    #: Its last answer that carried the load (None: none yet).
    last: Sample | None = None
    #: Its failure was logged: quiet until it answers again.
    silent: bool = False


class AutoscaleLoop:
    """The autoscaler: ticks every `autoscale_interval_s`, applying `autoscale_policy` to each
    model with `spec.autoscaling`; `status` is what the reconciler publishes of it."""

    def __init__(
        self,
        shared: Shared,
        enqueue: Callable[[Key], None],
        metrics_url: MetricsUrl | None = None,
    ) -> None:
        settings = self.settings = shared.settings
        self.client, self.store, self.cache = shared.client, shared.store, shared.cache
        self.event = shared.event
        self.enqueue = enqueue
        self.metrics_url = metrics_url or (lambda pod: settings.pod_metrics_url.format(ip=pod.ip))
        self.models: dict[Key, ModelScaling] = {}
        self._servers: dict[str, Endpoint] = {}
        self._gateway = Endpoint()
        self._session: aiohttp.ClientSession | None = None

    def status(self, key: Key) -> Mapping[str, Any] | None:
        """What the reconciler publishes as the model's `status.autoscaling`."""
        scaling = self.models.get(key)
        return None if scaling is None else scaling.status

    async def run(self) -> None:
        """Tick forever; the sleep comes after each tick's work, so two decisions of a model
        are always at least an interval apart."""
        try:
            while True:
                try:
                    await self.tick()
                except Exception as error:  # the loop outlives anything one tick does
                    logger.error("autoscaler tick failed: %r", error, exc_info=error)
                await asyncio.sleep(self.settings.autoscale_interval_s)
        finally:
            await self.close()

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    async def tick(self) -> None:
        models = [(r, p) for r in self.store.records() if (p := self._policy(r)) is not None]
        self._forget_all_but({r.key for r, _ in models})
        if not models:
            return
        held = await self._held()
        scraped = {url for record, _ in models for url in self._server_urls(record.key)}
        self._servers = {u: e for u, e in self._servers.items() if u in scraped}  # pods gone
        await asyncio.gather(*(self._scale(r, p, held) for r, p in models))

    def _policy(self, record: ModelRecord) -> Autoscaling | None:
        if record.deleting:
            return None
        spec = self.store.spec(record)
        # A spec that does not parse: the reconciler says what is wrong.
        return spec.autoscaling if isinstance(spec, ModelSpec) else None

    def _forget_all_but(self, keys: set[Key]) -> None:
        """Forget the models gone or no longer autoscaled; a published status loses
        `autoscaling` at the reconcile this asks for."""
        for key in [k for k in self.models if k not in keys]:
            if self.models.pop(key).status is not None:
                self.enqueue(key)

    # One model.

    async def _scale(
        self, record: ModelRecord, policy: Autoscaling, held: Mapping[Key, int] | None
    ) -> None:
        key, now = record.key, time.monotonic()
        in_flight, complete = await self.servers_load(key)
        waiting = (held or {}).get(key, 0)
        load = Load(in_flight, waiting, complete and held is not None)
        scaling = self._scaling(record)
        replicas = scaling.replicas(declared_replicas(record.spec), now)
        interval = self.settings.autoscale_interval_s
        decision = decide(policy, replicas, load, scaling.history, now, interval)
        if decision is None:
            return
        changed = decision.replicas != replicas
        if changed and not await self._write(record, scaling, replicas, decision):
            return  # not written: decide again next tick, as if this one never happened
        scaling.history = decision.history
        if scaling.publish(_status(decision, load, scaling.scaled_at), time.monotonic()):
            self.enqueue(key)

    def _scaling(self, record: ModelRecord) -> ModelScaling:
        scaling = self.models.get(record.key)
        if scaling is None or scaling.uid != record.owner.uid:  # a namesake starts afresh
            scaling = self.models[record.key] = ModelScaling(record.owner.uid)
        return scaling

    async def _write(
        self, record: ModelRecord, scaling: ModelScaling, replicas: int, decision: Decision
    ) -> bool:
        """Scale the model from `replicas` as `decision` says; returns whether it was taken."""
        namespace, name = record.key
        try:
            await self.client.scale(namespace, name, decision.replicas)
        except ApiError as error:
            logger.warning("could not scale %s/%s: %s", namespace, name, error)
            return False
        scaling.written = Written(replicas, decision.replicas, time.monotonic())
        scaling.scaled_at = _now()
        message = f"{replicas} -> {decision.replicas} replicas: {decision.reason}"
        logger.info("%s/%s: %s: %s", namespace, name, decision.event, message)
        self.event(record.ref, "Normal", decision.event, message)
        return True

    # The load.

    def _server_urls(self, key: Key) -> set[str]:
        """The `/metrics` of the model's ready servers, each distinct URL once."""
        pods = [p for p in self.cache.summaries(POD, key) if isinstance(p, PodState)]
        return {self.metrics_url(p) for p in pods if p.ready and not p.terminating and p.ip}

    async def servers_load(self, key: Key) -> tuple[float, bool]:
        """Mean requests in flight or queued over the interval, summed over the model's
        ready servers, and whether every one answered."""
        urls = sorted(self._server_urls(key))
        means = await asyncio.gather(*(self._mean_in_flight(url) for url in urls))
        return sum(m for m in means if m is not None), all(m is not None for m in means)

    async def _mean_in_flight(self, url: str) -> float | None:
        endpoint = self._servers.setdefault(url, Endpoint())
        text = await self._get(url, endpoint)
        sample = _sample(text, time.monotonic()) if text is not None else None
        if sample is None:
            return None
        previous, endpoint.last = endpoint.last, sample
        if previous is None or sample.load_seconds < previous.load_seconds:
            return sample.in_flight  # a first look, or a restarted server: the instant count
        return (sample.load_seconds - previous.load_seconds) / max(sample.at - previous.at, 1e-3)

    async def _held(self) -> dict[Key, int] | None:
        """Requests the gateway holds per model; {} without a gateway, None if it is silent."""
        if not self.settings.gateway_url:
            return {}
        text = await self._get(self.settings.gateway_url.rstrip("/") + "/metrics", self._gateway)
        return None if text is None else _held_counts(text)

    async def _get(self, url: str, endpoint: Endpoint) -> str | None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.scrape_timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        try:
            async with self._session.get(url) as response:
                response.raise_for_status()
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            if not endpoint.silent:
                endpoint.silent = True
                logger.warning("no load from %s (%r): not scaling down on it", url, error)
            return None
        endpoint.silent = False
        return text


def _status(decision: Decision, load: Load, scaled_at: str | None) -> dict[str, Any]:
    """The decision as `status.autoscaling`."""
    status: dict[str, Any] = {
        "desiredReplicas": decision.replicas,
        "load": round(load.total, 1),
        "reason": decision.reason,
    }
    if scaled_at is not None:
        status["lastScaleTime"] = scaled_at
    return status


def _decided(status: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in status.items() if k not in _MOVING}


def _samples_of(text: str) -> Iterable[tuple[str, Mapping[str, str], float]]:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            yield sample.name, sample.labels, sample.value


def _sample(text: str, at: float) -> Sample | None:
    try:
        values = {name: value for name, _, value in _samples_of(text)}
    except ValueError:
        return None  # not the Prometheus text format: not a tti-server
    if LOAD_METRIC not in values:
        return None
    return Sample(values[LOAD_METRIC], values.get(IN_FLIGHT_METRIC, 0.0), at)


def _held_counts(text: str) -> dict[Key, int] | None:
    try:
        return {
            (labels["namespace"], labels["model"]): int(value)
            for name, labels, value in _samples_of(text)
            if name == HELD_METRIC and value > 0
        }
    except (ValueError, KeyError):
        return None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
