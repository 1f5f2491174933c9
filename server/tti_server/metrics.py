"""Prometheus metrics, one registry per app, and the middleware that records requests.

The middleware is plain ASGI (no BaseHTTPMiddleware: it costs a task per
request). It also gives every request its id and every response `X-Request-Id`.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tti_server.engine import Engine

# `*_created` series double the output and no dashboard reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class EngineCollector(Collector):
    """Reads queue depth and image counts from the engine at scrape time."""

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
        depth.add_metric([], engine.queue_depth if engine else 0)
        images.add_metric([], engine.stats.images_generated if engine else 0)
        batches.add_metric(["ok"], engine.stats.batches if engine else 0)
        batches.add_metric(["failed"], engine.stats.failed_batches if engine else 0)
        ready.add_metric([], 1 if engine else 0)
        yield from (depth, images, batches, ready)


class ServerMetrics:
    def __init__(self, engine: Callable[[], Engine | None]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "tti_requests",
            "HTTP requests by route and status code",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "tti_request_duration_seconds",
            "HTTP request latency by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(EngineCollector(engine))

        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:  # labels() is a locked lookup: resolve each series once
            children = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

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
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
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
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate: str = value.decode("latin-1")
            if _CLIENT_ID.match(candidate):
                return candidate
    # 128 random bits like uuid4, but without a getrandom() syscall per request.
    return f"{random.getrandbits(128):032x}"
