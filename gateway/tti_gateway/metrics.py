"""The gateway's Prometheus metrics: per model requests, latencies, cold starts, and load.

`tti_gateway_held_requests` (waiting for a model with no ready pod) and
`tti_gateway_in_flight` are what the autoscaler reads from the gateway.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from tti_contracts import metrics as names
from tti_gateway.endpoints import EndpointTable, Key, ModelState

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
#: The labels of requests for no known model: bounded cardinality.
UNKNOWN: Key = ("", "unknown")
LABELS = ["namespace", "model"]


class TableCollector(Collector):
    """Load and state per model, read from the endpoint table at scrape time."""

    def __init__(self, table: EndpointTable) -> None:
        self.table = table

    def collect(self) -> Iterator[Metric]:
        labels = LABELS
        held = GaugeMetricFamily(
            names.GATEWAY_HELD, "Requests waiting for a ready pod", labels=labels
        )
        in_flight = GaugeMetricFamily(
            "tti_gateway_in_flight", "Requests forwarded and not yet answered", labels=labels
        )
        ready = GaugeMetricFamily(
            "tti_gateway_ready_endpoints", "Ready pods of the model", labels=labels
        )
        state = GaugeMetricFamily(
            "tti_gateway_model_state", "1 for the model's current state", labels=[*LABELS, "state"]
        )
        for key, model in self.table.models.items():
            held.add_metric(key, model.held)
            in_flight.add_metric(key, sum(e.in_flight for e in model.endpoints.values()))
            ready.add_metric(key, len(model.ready()))
            for each in ModelState:
                state.add_metric([*key, each.value], 1 if model.state is each else 0)
        yield from (held, in_flight, ready, state)


class RequestCollector(Collector):
    """Requests by model and status, latency by model, cold starts and retries by model.

    Plain numbers read at scrape time, as in tti_server.metrics: every update runs on the
    event loop, so prometheus_client's per-update locks and label lookups are not needed.
    """

    def __init__(self) -> None:
        self.requests: dict[tuple[Key, int], int] = {}
        self.latency: dict[Key, list[float]] = {}  # per bucket (the last is +Inf), then the sum
        self.cold_starts: dict[Key, int] = {}
        self.retries: dict[Key, int] = {}

    def observe(self, model: Key, status: int, seconds: float) -> None:
        key = (model, status)
        self.requests[key] = self.requests.get(key, 0) + 1
        counts = self.latency.get(model)
        if counts is None:
            counts = self.latency[model] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        counts[-1] += seconds

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "tti_gateway_requests", "Requests by model and status", labels=[*LABELS, "status"]
        )
        for (model, status), count in self.requests.items():
            requests.add_metric([*model, str(status)], count)
        latency = HistogramMetricFamily(
            "tti_gateway_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, held time included",
            labels=LABELS,
        )
        bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
        for model, counts in self.latency.items():
            buckets = list(zip(bounds, accumulate(counts[:-1]), strict=True))
            latency.add_metric(model, buckets, counts[-1])
        yield from (requests, latency)
        yield _counter(
            "tti_gateway_cold_starts",
            "Times a model with no ready pod was woken by a request",
            self.cold_starts,
        )
        yield _counter(
            "tti_gateway_retries",
            "Requests sent to a second pod after the first could not be reached",
            self.retries,
        )


def _counter(name: str, documentation: str, values: dict[Key, int]) -> Metric:
    family = CounterMetricFamily(name, documentation, labels=LABELS)
    for model, count in values.items():
        family.add_metric(model, count)
    return family


def count(values: dict[Key, int], model: Key) -> None:
    values[model] = values.get(model, 0) + 1


class GatewayMetrics:
    def __init__(self, table: EndpointTable) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestCollector()
        self.registry.register(self.requests)
        self.registry.register(TableCollector(table))
        self.observe = self.requests.observe

    def cold_start(self, model: Key) -> None:
        count(self.requests.cold_starts, model)

    def retry(self, model: Key) -> None:
        count(self.requests.retries, model)

    def render(self) -> bytes:
        return generate_latest(self.registry)
