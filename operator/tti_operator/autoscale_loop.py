"""The autoscaler's loop: every interval, read each autoscaled model's load, decide, scale.

Per tick: one scrape of the gateway's `/metrics` (requests it holds per model), then for
every model with `spec.autoscaling`, concurrently, a scrape of each of its ready pods'
`/metrics` (`tti_request_load_seconds_total`: its increase over the interval is the mean
number of requests in flight or queued), the decision (`autoscaler.decide`), a patch of
the model's scale subresource when the count changes (the reconcile then rolls the
Deployment, as for an HPA) and an Event. The status has one writer, the reconciler: the
decision is left in `statuses` and the model's key enqueued.

A pod or gateway that does not answer makes the load incomplete: logged once, never a
reason to scale down. Models without `spec.autoscaling` are never looked at.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tti_contracts import metrics as names
from tti_contracts.api import declared_replicas
from tti_kube.client import ApiError, KubeClient
from tti_operator.autoscaler import Decision, History, Load, decide
from tti_operator.informer import ChildCache, Key
from tti_operator.kinds import POD
from tti_operator.reconciler import EventSink, ModelRecord, ModelStore
from tti_operator.settings import OperatorSettings
from tti_operator.spec import Autoscaling, InvalidSpec, parse_spec
from tti_operator.status import PodState

LOAD_METRIC = names.sample_name(names.REQUEST_LOAD)
IN_FLIGHT_METRIC = names.IN_FLIGHT
HELD_METRIC = names.GATEWAY_HELD
#: Seconds the autoscaler trusts its own scale write over a watch that has not shown it yet.
ECHO_WAIT_S = 30.0
#: A status that says the same decision with another load is published at most this often
#: (the HPA's sync period): the load moves every tick, and each publish is an API write.
STATUS_REFRESH_S = 15.0

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


class Autoscaler:
    def __init__(
        self,
        settings: OperatorSettings,
        client: KubeClient,
        store: ModelStore,
        cache: ChildCache,
        event: EventSink,
        enqueue: Callable[[Key], None],
        metrics_url: MetricsUrl | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.store = store
        self.cache = cache
        self.event = event
        self.enqueue = enqueue
        self.metrics_url = metrics_url or (lambda pod: settings.pod_metrics_url.format(ip=pod.ip))
        #: What the reconciler publishes as `status.autoscaling`, per model.
        self.statuses: dict[Key, dict[str, Any]] = {}
        self._histories: dict[Key, tuple[str, History]] = {}
        self._written: dict[Key, Written] = {}
        self._scaled_at: dict[Key, str] = {}  # lastScaleTime
        self._published_at: dict[Key, float] = {}
        self._samples: dict[str, Sample] = {}
        self._silent: set[str] = set()  # URLs whose failure was logged, until they answer
        self._scraped: set[str] = set()  # URLs looked at in the current tick
        self._session: aiohttp.ClientSession | None = None

    def status(self, key: Key) -> Mapping[str, Any] | None:
        return self.statuses.get(key)

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
        models = [(r, p) for r in self.store.records() if (p := _policy(r)) is not None]
        self._forget_all_but({r.key for r, _ in models})
        if not models:
            return
        held = await self._held()
        scraped_before = set(self._samples)
        self._scraped = set()
        await asyncio.gather(*(self._scale(r, p, held) for r, p in models))
        for url in scraped_before - self._scraped:  # pods gone: forget their last sample
            del self._samples[url]

    # One model.

    async def _scale(
        self, record: ModelRecord, policy: Autoscaling, held: Mapping[Key, int] | None
    ) -> None:
        key, now = record.key, time.monotonic()
        in_flight, complete = await self.servers_load(key)
        waiting = (held or {}).get(key, 0)
        load = Load(in_flight, waiting, complete and held is not None)
        replicas = self._replicas(record, now)
        uid, history = self._histories.get(key, (record.owner.uid, History()))
        if uid != record.owner.uid:  # a namesake starts afresh
            history = History()
        interval = self.settings.autoscale_interval_s
        decision = decide(policy, replicas, load, history, now, interval)
        if decision is None:
            return
        if decision.replicas != replicas and not await self._write(record, replicas, decision):
            return  # not written: decide again next tick, as if this one never happened
        self._histories[key] = (record.owner.uid, decision.history)
        self._publish(key, decision, load)

    def _replicas(self, record: ModelRecord, now: float) -> int:
        """The model's replicas: its spec's, or the autoscaler's own write while the watch
        has not shown it yet (the write is not someone else's scale)."""
        observed = _spec_replicas(record)
        written = self._written.get(record.key)
        if written is None or now - written.at > ECHO_WAIT_S or observed != written.before:
            self._written.pop(record.key, None)
            return observed
        return written.after

    async def _write(self, record: ModelRecord, replicas: int, decision: Decision) -> bool:
        namespace, name = record.key
        try:
            await self.client.scale(namespace, name, decision.replicas)
        except ApiError as error:
            logger.warning("could not scale %s/%s: %s", namespace, name, error)
            return False
        self._written[record.key] = Written(replicas, decision.replicas, time.monotonic())
        message = f"{replicas} -> {decision.replicas} replicas: {decision.reason}"
        logger.info("%s/%s: %s: %s", namespace, name, decision.event, message)
        self.event(record.ref, "Normal", decision.event, message)
        self._scaled_at[record.key] = _now()
        return True

    def _publish(self, key: Key, decision: Decision, load: Load) -> None:
        """Leave the decision for the reconciler and ask it to publish: at once when the
        decision changed, else (only the load moved) at most every STATUS_REFRESH_S."""
        before, now = self.statuses.get(key, {}), time.monotonic()
        after: dict[str, Any] = {
            "desiredReplicas": decision.replicas,
            "load": round(load.total, 1),
            "reason": decision.reason,
        }
        if key in self._scaled_at:
            after["lastScaleTime"] = self._scaled_at[key]
        decided = {k: v for k, v in after.items() if k not in ("load", "reason")}
        changed = decided != {k: v for k, v in before.items() if k not in ("load", "reason")}
        due = now - self._published_at.get(key, -STATUS_REFRESH_S) >= STATUS_REFRESH_S
        if changed or (after != before and due):
            self.statuses[key], self._published_at[key] = after, now
            self.enqueue(key)

    def _forget_all_but(self, keys: set[Key]) -> None:
        """Drop what is remembered of models gone or no longer autoscaled; their status
        loses `autoscaling` at the next publish."""
        for key in [k for k in self.statuses if k not in keys]:
            del self.statuses[key]
            self.enqueue(key)
        for table in (self._histories, self._written, self._scaled_at, self._published_at):
            for key in [k for k in table if k not in keys]:
                del table[key]

    # The load.

    async def servers_load(self, key: Key) -> tuple[float, bool]:
        """Mean requests in flight or queued over the interval, summed over the model's
        ready servers (each distinct URL once), and whether every one answered."""
        pods = [p for p in self.cache.summaries(POD, key) if isinstance(p, PodState)]
        urls = {self.metrics_url(p) for p in pods if p.ready and not p.terminating and p.ip}
        means = await asyncio.gather(*(self._mean_in_flight(url) for url in sorted(urls)))
        return sum(m for m in means if m is not None), all(m is not None for m in means)

    async def _mean_in_flight(self, url: str) -> float | None:
        self._scraped.add(url)
        text = await self._get(url)
        sample = _sample(text, time.monotonic()) if text is not None else None
        if sample is None:
            return None
        previous, self._samples[url] = self._samples.get(url), sample
        if previous is None or sample.load_seconds < previous.load_seconds:
            return sample.in_flight  # a first look, or a restarted server: the instant count
        return (sample.load_seconds - previous.load_seconds) / max(sample.at - previous.at, 1e-3)

    async def _held(self) -> dict[Key, int] | None:
        """Requests the gateway holds per model; {} without a gateway, None if it is silent."""
        if not self.settings.gateway_url:
            return {}
        text = await self._get(self.settings.gateway_url.rstrip("/") + "/metrics")
        return None if text is None else _held_counts(text)

    async def _get(self, url: str) -> str | None:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.settings.scrape_timeout_s)
            self._session = aiohttp.ClientSession(timeout=timeout)
        try:
            async with self._session.get(url) as response:
                response.raise_for_status()
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError) as error:
            if url not in self._silent:
                self._silent.add(url)
                logger.warning("no load from %s (%r): not scaling down on it", url, error)
            return None
        self._silent.discard(url)
        return text


def _policy(record: ModelRecord) -> Autoscaling | None:
    if record.deleting:
        return None
    try:
        return parse_spec(record.spec).autoscaling
    except InvalidSpec:
        return None  # the reconciler says what is wrong


def _spec_replicas(record: ModelRecord) -> int:
    return declared_replicas(record.spec)


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
