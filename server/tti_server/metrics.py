"""Prometheus metrics, one registry per app, and the middleware that records requests.

The middleware is plain ASGI (no BaseHTTPMiddleware: it costs a task per
request). It also gives every request its id and every response `X-Request-Id`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Callable, Iterator
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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tti_contracts import metrics as names
from tti_contracts.envelope import request_id
from tti_server.engine import Engine

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REQUEST_LABELS = ["route", "method", "status"]
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class EngineCollector(Collector):
    """Reads queue depth, load and image counts from the engine at scrape time."""

    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self._engine = engine

    def collect(self) -> Iterator[Metric]:
        engine = self._engine()
        depth = GaugeMetricFamily("tti_queue_depth", "Requests waiting for a worker")
        images = CounterMetricFamily("tti_images_generated", "Images generated")
        batches = CounterMetricFamily(
            "tti_batches", "Pipeline calls, by outcome", labels=["outcome"]
        )
        ready = GaugeMetricFamily("tti_ready", "1 once the model is loaded and warmed up")
        running = GaugeMetricFamily("tti_running", "Requests in a pipeline call now")
        in_flight = GaugeMetricFamily(
            names.IN_FLIGHT, "Requests in flight or queued now (HTTP and gRPC)"
        )
        load = CounterMetricFamily(
            names.REQUEST_LOAD,
            "Integral over time of the requests in flight or queued: its rate is the mean "
            "concurrency (what the operator's autoscaler scales on)",
        )
        depth.add_metric([], engine.queue_depth if engine else 0)
        in_flight.add_metric([], engine.stats.in_flight.now if engine else 0)
        load.add_metric([], engine.stats.in_flight.seconds if engine else 0)
        running.add_metric([], engine.stats.running if engine else 0)
        images.add_metric([], engine.stats.images_generated if engine else 0)
        batches.add_metric(["ok"], engine.stats.batches if engine else 0)
        batches.add_metric(["failed"], engine.stats.failed_batches if engine else 0)
        ready.add_metric([], 1 if engine else 0)
        yield from (depth, running, in_flight, load, images, batches, ready)


class RequestCollector(Collector):
    """Requests by route, method and status, and latency by route, as plain numbers.

    prometheus_client's Counter and Histogram take a lock per update and find the
    bucket in Python; every observation and every scrape here runs on the event
    loop, so plain integers and `bisect` are enough (a third of the cost per request).
    """

    def __init__(self) -> None:
        self._requests: dict[tuple[str, str, int | str], int] = {}
        self._latency: dict[str, _Latency] = {}

    def observe(self, route: str, method: str, status: int | str, seconds: float) -> None:
        """HTTP: path template, method, status code; gRPC: full method, GRPC, code name."""
        key = (route, method, status)
        self._requests[key] = self._requests.get(key, 0) + 1
        latency = self._latency.get(route)
        if latency is None:
            latency = self._latency[route] = _Latency()
        latency.observe(seconds)

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "tti_requests",
            "Requests by route and status: HTTP (status code) and gRPC (method GRPC, code name)",
            labels=REQUEST_LABELS,
        )
        for (route, method, status), count in self._requests.items():
            requests.add_metric([route, method, str(status)], count)
        latency = HistogramMetricFamily(
            "tti_request_duration_seconds",
            "Request latency by route (HTTP path or gRPC method)",
            labels=["route"],
        )
        for route, histogram in self._latency.items():
            latency.add_metric([route], histogram.cumulative_buckets(), histogram.total)
        yield from (requests, latency)


class _Latency:
    """One route's latency histogram: a count per bucket (the last is +Inf) and the sum."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bound's bucket (le).
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.total += seconds

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
        return list(zip(bounds, accumulate(self.counts), strict=True))


class ServerMetrics:
    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = RequestCollector()
        self.registry.register(self.requests)
        self.registry.register(EngineCollector(engine))
        self.observe = self.requests.observe

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestContextMiddleware:
    """Request id in, `X-Request-Id` out, and one metrics observation per request."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = _request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        start = time.perf_counter()
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                # ASGI response header names are lowercase; error responses set their own.
                if all(name != b"x-request-id" for name, _ in headers):
                    headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.observe(label, method, status, time.perf_counter() - start)


def _request_id(scope: Scope) -> str:
    """The client's X-Request-Id when it is a sane token, else a fresh one."""
    sent = next((value for name, value in scope["headers"] if name == b"x-request-id"), None)
    return request_id(None if sent is None else sent.decode("latin-1"))
