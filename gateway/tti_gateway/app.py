"""The gateway's ASGI apps: for clients, the forwarded routes, `GET /v1/models`, health and
the playground page at `/` (unless `--playground false`); on the metrics port, `/metrics`.

`create_app(settings, waker=...)` builds the clients' app; the lifespan opens the pool of
keep-alive connections to the pods (and an aiohttp session for the static source's probes)
and starts the endpoint source. `create_metrics_app(gateway)` builds the other, which
`tti-gateway` serves on `--metrics-port` only, so a client never reads the list of models,
namespaces and request counts that `/metrics` holds.

No route answers with a redirect: Starlette's redirect to the path with or without a trailing
slash builds its `Location` from the client's `Host` header (an open redirect). The forwarded
routes are served with a trailing slash too; anything else is a 404.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tti_contracts.envelope import request_id
from tti_contracts.routes import FORWARDED
from tti_gateway.auth import Access, TokensFile, allowed
from tti_gateway.cluster import FIELD_MANAGER, Client, ClusterSource, credentials
from tti_gateway.endpoints import EndpointTable, GatewayError, HoldPolicy, Model, Waker
from tti_gateway.envelope import error_response
from tti_gateway.identity import CachePolicy, Identity
from tti_gateway.metrics import GatewayMetrics
from tti_gateway.playground import routes as playground_routes
from tti_gateway.proxy import ProxyRoute, TrustedProxies, caller_of
from tti_gateway.settings import GatewaySettings
from tti_gateway.source import StaticSource
from tti_gateway.upstream import Pool

log = logging.getLogger(__name__)


class Gateway:
    """Everything the routes share: settings, the endpoint table, the client pool, metrics."""

    def __init__(self, settings: GatewaySettings, waker: Waker | None = None) -> None:
        self.settings = settings
        policy = HoldPolicy(settings.hold_timeout, settings.max_held, settings.retry_after)
        self.table = EndpointTable(policy, self._wake)
        self._waker = waker  # the cluster source's, when none is given
        # Read now, so that a gateway without credentials stops at once, saying so.
        self._credentials = credentials() if settings.source == "cluster" else None
        self.metrics = GatewayMetrics(self.table)
        tokens = settings.auth_tokens_file
        # Its own connections to the API server: a flood of tokens to review must not
        # queue the watches' lists or a wake behind it.
        self._reviewer = Client(FIELD_MANAGER) if settings.identity else None
        self.access = Access(
            TokensFile(tokens) if tokens else None,
            self._identity(settings, self._reviewer) if self._reviewer else None,
        )
        self.pool = Pool(settings.connect_timeout)
        self.trusted_proxies = TrustedProxies(settings.trusted_proxies)

    @staticmethod
    def _identity(settings: GatewaySettings, reviewer: Client) -> Identity:
        policy = CachePolicy(
            settings.identity_allow_ttl, settings.identity_deny_ttl, settings.identity_cache_size
        )
        return Identity(reviewer, settings.identity_audience, policy)

    async def _wake(self, model: Model) -> None:
        self.metrics.cold_start(model.key)
        if self._waker is not None:
            await self._waker(model)

    @asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as session:
            try:
                async with (
                    self._reviews(),
                    self.access.running(self.settings.auth_tokens_poll),
                    self._source(session),
                ):
                    yield
            finally:
                self.pool.close()

    @asynccontextmanager
    async def _reviews(self) -> AsyncIterator[None]:
        """The API server connection of TokenReviews and SubjectAccessReviews (--identity)."""
        if self._reviewer is None:
            yield
            return
        assert self._credentials is not None
        await self._reviewer.connect(self._credentials)
        try:
            yield
        finally:
            await self._reviewer.close()

    @asynccontextmanager
    async def _source(self, session: aiohttp.ClientSession) -> AsyncIterator[None]:
        """The running endpoint source the settings name."""
        if self.settings.source == "static":
            static = StaticSource(
                self.table, self.settings.models, session, self.settings.probe_interval
            )
            static.start()
            try:
                yield
            finally:
                await static.stop()
            return
        assert self._credentials is not None
        client = Client(FIELD_MANAGER)
        await client.connect(self._credentials)
        source = ClusterSource(self.table, client, self.settings.namespaces)
        self._waker = self._waker or source.wake
        source.start()
        try:
            yield
        finally:
            await source.stop()
            await client.close()

    # -- routes ------------------------------------------------------------------------

    async def list_models(self, request: Request) -> Response:
        """OpenAI's model list, with each model's state, ready pods and (where known) how it
        fits a requested side: what the playground's picker shows. Only the models the
        caller may call: a name is what it would send, unambiguous among those."""
        caller = await caller_of(self, request.scope)
        models = await allowed(caller, sorted(self.table.models.values(), key=lambda m: m.key))
        names = Counter(m.name for m in models)
        data = []
        for model in models:
            # What a request names it by: NAMESPACE/NAME only where the name is ambiguous.
            model_id = model.name if names[model.name] == 1 else model.label
            data.append(model_entry(model, model_id))
            data += [adapter_entry(model, model_id, adapter) for adapter in model.adapters]
        return JSONResponse({"object": "list", "data": data})

    async def healthz(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(self, request: Request) -> Response:
        if not self.table.synced:
            rid = request_id(request.headers.get("x-request-id"))
            retry = {"Retry-After": str(self.settings.retry_after)}
            return error_response(503, "the endpoint table is not filled yet", rid, retry)
        return JSONResponse({"status": "ready"})

    async def metrics_route(self, _request: Request) -> Response:
        return Response(self.metrics.render(), media_type="text/plain; version=0.0.4")


def model_entry(model: Model, model_id: str) -> dict[str, object]:
    """One model in `GET /v1/models`: OpenAI's fields and the gateway's."""
    listed: dict[str, object] = {
        "id": model_id,
        "object": "model",
        "created": 0,
        "owned_by": "tti-operator",
        "namespace": model.namespace,
        "state": model.state.value,
        "ready_replicas": len(model.ready()),
    }
    if model.rules is not None:  # the static table does not know the backend
        listed["side_multiple"] = model.rules["side_multiple"]
        listed["rules"] = model.rules
    return listed


def adapter_entry(model: Model, model_id: str, adapter: str) -> dict[str, object]:
    """An adapter in `GET /v1/models`: a model of its own name, with its parent (as vLLM
    lists LoRA adapters)."""
    return {**model_entry(model, f"{model_id}/{adapter}"), "parent": model_id}


class GatewayApp(Starlette):
    """Starlette, with the forwarded routes dispatched first by a dict lookup.

    Starlette's router and middleware stack cost tens of microseconds of CPU per request
    (a regex match per route, a request object, exception-middleware wrappers): a large share
    of the gateway's own work on a fast model. A forwarded route answers its own errors
    (`ProxyRoute` catches `GatewayError`), so a POST to one goes straight to it; everything
    else (other methods and paths, lifespan) takes Starlette's usual way.
    """

    def __init__(self, hot: dict[str, ProxyRoute], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hot = hot

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            route = self.hot.get(scope["path"])
            if route is not None:
                await route(scope, receive, send)
                return
        await super().__call__(scope, receive, send)


def create_app(settings: GatewaySettings, waker: Waker | None = None) -> Starlette:
    """The clients' app."""
    gateway = Gateway(settings, waker)
    canonical = {path: ProxyRoute(gateway, spec, path) for path, spec in FORWARDED.items()}
    # Also in Starlette's router, so that another method on these paths still gets its 405.
    routes = [Route(path, route, methods=["POST"]) for path, route in canonical.items()]
    routes += [
        Route("/v1/models", gateway.list_models, methods=["GET"]),
        Route("/healthz", gateway.healthz, methods=["GET"]),
        Route("/readyz", gateway.readyz, methods=["GET"]),
    ]
    if settings.playground:
        routes += playground_routes()
    # With a trailing slash: the same route, which forwards to the path without it.
    hot = canonical | {path + "/": route for path, route in canonical.items()}
    app = GatewayApp(hot, routes=routes, lifespan=gateway.lifespan)
    app.router.redirect_slashes = False
    app.state.gateway = gateway
    app.add_exception_handler(GatewayError, _gateway_error)
    app.add_exception_handler(HTTPException, _http_error)
    return app


def create_metrics_app(gateway: Gateway) -> Starlette:
    """The metrics port's app: `GET /metrics` and nothing else."""
    app = Starlette(routes=[Route("/metrics", gateway.metrics_route, methods=["GET"])])
    app.router.redirect_slashes = False
    app.add_exception_handler(HTTPException, _http_error)
    return app


async def _gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    rid = request_id(request.headers.get("x-request-id"))
    return error_response(exc.status, exc.details, rid, exc.headers)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    details = {
        404: f"path: no route for {request.url.path}",
        405: f"method: {request.method} is not allowed on {request.url.path}",
    }.get(exc.status_code, str(exc.detail))
    rid = request_id(request.headers.get("x-request-id"))
    return error_response(exc.status_code, details, rid, exc.headers)
