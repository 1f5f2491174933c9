"""The gateway's Prometheus metrics: per model requests, latencies, cold starts, and load.

`tti_gateway_held_requests` (waiting for a model with no ready pod) and
`tti_gateway_in_flight` are what the autoscaler reads from the gateway.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tti_gateway.endpoints import EndpointTable, ModelState

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
UNKNOWN = "unknown"  # the model label of requests for no known model: bounded cardinality


class TableCollector(Collector):
    """Load and state per model, read from the endpoint table at scrape time."""

    def __init__(self, table: EndpointTable) -> None:
        self.table = table

    def collect(self) -> Iterator[Metric]:
        labels = ["model"]
        held = GaugeMetricFamily(
            "tti_gateway_held_requests", "Requests waiting for a ready pod", labels=labels
        )
        in_flight = GaugeMetricFamily(
            "tti_gateway_in_flight", "Requests forwarded and not yet answered", labels=labels
        )
        ready = GaugeMetricFamily(
            "tti_gateway_ready_endpoints", "Ready pods of the model", labels=labels
        )
        state = GaugeMetricFamily(
            "tti_gateway_model_state", "1 for the model's current state", labels=["model", "state"]
        )
        for name, model in self.table.models.items():
            held.add_metric([name], model.held)
            in_flight.add_metric([name], sum(e.in_flight for e in model.endpoints.values()))
            ready.add_metric([name], len(model.ready()))
            for each in ModelState:
                state.add_metric([name, each.value], 1 if model.state is each else 0)
        yield from (held, in_flight, ready, state)


class GatewayMetrics:
    def __init__(self, table: EndpointTable) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tti_gateway_requests",
            "Requests by model and status",
            ["model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tti_gateway_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, held time included",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.cold_starts = Counter(
            "tti_gateway_cold_starts",
            "Times a model with no ready pod was woken by a request",
            ["model"],
            registry=self.registry,
        )
        self.retries = Counter(
            "tti_gateway_retries",
            "Requests sent to a second pod after the first could not be reached",
            ["model"],
            registry=self.registry,
        )
        self.registry.register(TableCollector(table))

    def observe(self, model: str, status: int, seconds: float) -> None:
        self.requests.labels(model, str(status)).inc()
        self.latency.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
