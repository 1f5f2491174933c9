"""Probes, model information and Prometheus metrics."""

from __future__ import annotations

from importlib import metadata

from fastapi import APIRouter, Request
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import PlainTextResponse, Response

from tti_server import __version__
from tti_server.api.deps import service_of
from tti_server.protocol import ErrorResponse, ModelInfo, ModelsInfo, RuntimeInfo, Status

#: The packages `/info/version` names (caikit lists its own `caikit*` packages).
VERSIONED_PACKAGES = ("tti-operator", "fastapi", "grpcio", "torch", "diffusers")

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
    service_of(request).ready_engine()
    return Status(status="ready")


@router.get("/info/models", summary="The served model (caikit's /info/models)")
async def info_models(request: Request) -> ModelsInfo:
    service = service_of(request)
    engine = service.engine
    devices = [worker.backend.device for worker in engine.workers] if engine else []
    model = ModelInfo(
        model_path=service.settings.resolved_model_path,
        name=service.model_id,
        size=service.model_size,
        metadata={
            "workers": len(devices),
            "devices": devices,
            # What a client may ask (the playground's controls follow it).
            "side_multiple": service.settings.catalogue_entry.side_multiple,
            "rules": service.settings.request_rules,
            # Each LoRA adapter: {state, scale, reason?} (requests name it MODEL/ADAPTER).
            "adapters": service.adapters.table.as_json(),
        },
        loaded=engine is not None,
        module_id=service.settings.model,
        module_metadata=service.producer,
    )
    return ModelsInfo(models=[model])


@router.get("/info/version", summary="Versions of the server and its libraries (caikit's)")
async def info_version() -> RuntimeInfo:
    return RuntimeInfo(python_packages=_package_versions(), runtime_version=__version__)


def _package_versions() -> dict[str, str]:
    versions = {}
    for package in VERSIONED_PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    body = request.app.state.metrics.render()
    return Response(body, media_type=CONTENT_TYPE_LATEST)
