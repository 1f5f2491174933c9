"""Probes, model information and Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import PlainTextResponse, Response

from tti_server.api.deps import ready_engine, service_of
from tti_server.protocol import ErrorResponse, ModelInfo, ModelsInfo, Status

router = APIRouter(tags=["operations"])


@router.get("/health", response_class=PlainTextResponse, summary="caikit's health check")
async def health() -> str:
    return "OK"


@router.get("/healthz", summary="Liveness: the process serves HTTP")
async def healthz() -> Status:
    return Status(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: the model is loaded and warmed up",
    responses={503: {"model": ErrorResponse, "description": "Loading, or failed to load"}},
)
async def readyz(request: Request) -> Status:
    ready_engine(service_of(request))
    return Status(status="ready")


@router.get("/info/models", summary="The served model (caikit's /info/models)")
async def info_models(request: Request) -> ModelsInfo:
    service = service_of(request)
    engine = service.engine
    devices = [worker.backend.device for worker in engine.workers] if engine else []
    model = ModelInfo(
        name=service.model_id,
        module_id=service.settings.model,
        loaded=engine is not None,
        workers=len(devices),
        devices=devices,
    )
    return ModelsInfo(models=[model])


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    body = request.app.state.metrics.render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
