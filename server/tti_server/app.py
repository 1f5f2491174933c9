"""The app factory and its lifespan: load the model once, warm it up, then serve.

Loading runs in a background task (on a thread) so the server answers
`/healthz` and a 503 `/readyz` while a large model loads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig

from tti_server import __version__
from tti_server.api import caikit, health, openai, playground
from tti_server.backends.base import Backend, BatchKey, GenerationRequest
from tti_server.backends.loading import ModelLoadError, load_backends
from tti_server.engine import Engine
from tti_server.errors import install_error_handlers
from tti_server.metrics import RequestContextMiddleware, ServerMetrics
from tti_server.service import Service
from tti_server.settings import Settings

log = logging.getLogger(__name__)

BackendLoader = Callable[[Settings], Sequence[Backend]]
LoadFailureHook = Callable[[str], None]
ReadyHook = Callable[[], None]

#: FastAPI's native OpenTelemetry, off: it asks OpenTelemetry for its providers on every
#: request, even with no SDK set up (~30 000 instructions of a stub request's ~1.5 million).
_NO_TELEMETRY: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}

#: The warm-up request: small, so it is quick even on CPU.
WARM_UP = GenerationRequest(prompt="warm-up", key=BatchKey(64, 64, 1, 0.0, None), n=1, seed=0)


def create_app(
    settings: Settings | None = None,
    *,
    backends: Sequence[Backend] | None = None,
    loader: BackendLoader | None = None,
    on_load_failure: LoadFailureHook | None = None,
    on_ready: ReadyHook | None = None,
) -> FastAPI:
    """Build the app. Tests may pass pre-built `backends` or a `loader` instead of the model.

    `on_ready` runs once the model is loaded and warmed up, before the first request
    is served (the server process tunes the garbage collector there).
    """
    settings = settings or Settings()
    if backends is not None and loader is not None:
        raise ValueError("pass backends or loader, not both")
    chosen_loader: BackendLoader = loader or load_backends
    if backends is not None:
        prebuilt = list(backends)
        chosen_loader = lambda _settings: prebuilt  # noqa: E731
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(service, chosen_loader, on_load_failure, on_ready))
        try:
            yield
        finally:
            loading.cancel()
            await asyncio.gather(loading, return_exceptions=True)
            if service.engine is not None:
                await service.engine.stop()

    app = FastAPI(
        title="tti-server",
        version=__version__,
        summary="Text-to-image inference: caikit- and OpenAI-compatible",
        lifespan=lifespan,
        telemetry=None if settings.opentelemetry else _NO_TELEMETRY,
    )
    app.state.service = service
    app.state.metrics = ServerMetrics(lambda: service.engine)
    app.add_middleware(RequestContextMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    for module in (caikit, openai, health):
        # Added flat: in this FastAPI each include_router() adds a matching layer per
        # request, a measurable share of a cheap request (tests/benchmarks/).
        app.router.routes.extend(module.router.routes)
    if settings.playground:
        app.router.routes.extend(playground.router.routes)
    return app


async def _load(
    service: Service,
    loader: BackendLoader,
    on_failure: LoadFailureHook | None,
    on_ready: ReadyHook | None,
) -> None:
    """Load, start the engine, warm every worker up; only then is the service ready."""
    settings = service.settings
    started = time.perf_counter()
    log.info("loading model %s (%s)", settings.model, settings.resolved_model_path or "built in")
    engine: Engine | None = None
    try:
        backends = await asyncio.to_thread(loader, settings)
        engine = Engine(
            backends,
            max_queue=settings.max_queue,
            request_timeout=settings.request_timeout,
            max_batch_size=settings.max_batch_size,
            batch_wait=settings.batch_wait_ms / 1000,
        )
        engine.start()
        await engine.run_on_each_worker(WARM_UP)
    except asyncio.CancelledError:  # shut down while still loading
        if engine is not None:
            await engine.stop()
        raise
    except Exception as exc:
        if engine is not None:
            await engine.stop()
        service.load_error = _load_failure_message(settings, exc)
        log.error("%s", service.load_error)
        log.debug("model load failure", exc_info=exc)
        if on_failure is not None:
            on_failure(service.load_error)
        return
    if on_ready is not None:
        on_ready()
    service.engine = engine
    devices = ", ".join(b.device for b in backends)
    log.info(
        "model %s ready: %d worker(s) on %s, loaded and warmed up in %.1f s",
        settings.served_model_id,
        len(backends),
        devices,
        time.perf_counter() - started,
    )


def _load_failure_message(settings: Settings, exc: Exception) -> str:
    where = settings.resolved_model_path
    source = f" from {where}" if where else ""
    reason = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
    return f"model: cannot load {settings.model}{source}: {reason}"
