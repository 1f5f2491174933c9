"""The HTTP app factory: routes, middleware and error handlers over one `Service`.

The service loads the model (in a background task, on a thread, so the server
answers `/healthz` and a 503 `/readyz` while a large model loads). The app starts
and stops the service in its lifespan only when it built it; `tti-server` builds
the service itself and shares it with the gRPC server.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from tti_server import __version__
from tti_server.api import caikit, health, openai, playground
from tti_server.api.openapi import install_openapi
from tti_server.backends.base import Backend
from tti_server.errors import install_error_handlers
from tti_server.metrics import RequestContextMiddleware
from tti_server.service import BackendLoader, LoadFailureHook, ReadyHook, Service
from tti_server.settings import Settings

#: FastAPI's native OpenTelemetry, off: it asks OpenTelemetry for its providers on every
#: request, even with no SDK set up (~30 000 instructions of a stub request's ~1.5 million).
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}


def create_app(
    settings: Settings | None = None,
    *,
    backends: Sequence[Backend] | None = None,
    loader: BackendLoader | None = None,
    on_load_failure: LoadFailureHook | None = None,
    on_ready: ReadyHook | None = None,
    service: Service | None = None,
) -> FastAPI:
    """Build the app. Tests may pass pre-built `backends` or a `loader` instead of the model.

    `on_ready` runs once the model is loaded and warmed up, before the first request
    is served (the server process tunes the garbage collector there). With `service`
    the caller owns the model's life (it starts and stops the service) and the other
    arguments but `settings` are not used.
    """
    owned = service is None
    service = service or _own_service(settings or Settings(), backends, loader)
    settings = service.settings
    if owned:
        service.on_load_failure, service.on_ready = on_load_failure, on_ready

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            service.start()
        try:
            yield
        finally:
            if owned:
                await service.stop()

    app = FastAPI(
        title="tti-server",
        version=__version__,
        summary="Text-to-image inference: caikit- and OpenAI-compatible",
        lifespan=lifespan,
        telemetry=None if settings.opentelemetry else _NO_TELEMETRY,
        # Its redirect to the path with or without a trailing slash builds the Location
        # from the client's Host header: an open redirect. Such paths are 404s.
        redirect_slashes=False,
    )
    app.state.service = service
    app.state.metrics = service.metrics
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    install_openapi(app, settings)
    for module in (caikit, openai, health):
        # Added flat: in this FastAPI each include_router() adds a matching layer per
        # request, a measurable share of a cheap request (tests/benchmarks/).
        app.router.routes.extend(module.router.routes)
    if settings.playground:
        app.router.routes.extend(playground.router.routes)
    return app


def _own_service(
    settings: Settings, backends: Sequence[Backend] | None, loader: BackendLoader | None
) -> Service:
    if backends is not None and loader is not None:
        raise ValueError("pass backends or loader, not both")
    if backends is not None:
        prebuilt = list(backends)
        return Service(settings, loader=lambda _settings: prebuilt)
    return Service(settings, loader=loader) if loader else Service(settings)
