"""The gRPC server: caikit's `ccv.ComputerVisionService`, health and reflection.

The servicer only translates: the request and its `mm-model-id` metadata become
the same `CaikitTextToImageRequest` the HTTP route validates, the service does
the rest, and its transport-neutral errors become status codes through
`GRPC_CODE`, the one table of them. It runs on the event loop the HTTP server
runs on, over the same `Service` (engine, batching, queue limits, metrics).

A client's deadline and cancellation cancel the handler, and with it the
request's place in the engine's queue.

An error a retry may cure (`errors.RETRY_CURES`: a full queue, out of memory, loading)
carries `grpc-retry-pushback-ms` in its trailing metadata: gRPC's own retry hint (gRFC A6),
which a client whose service config retries that status code waits out before retrying,
and which others can read. Request metadata is bounded as HTTP heads are (`--max-header-bytes`,
answered RESOURCE_EXHAUSTED by gRPC itself), and a connection must finish its handshake within
`--header-timeout` and is closed after `--keepalive-timeout` without a call.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

import computervisionservice_pb2
import computervisionservice_pb2_grpc
import grpc
from caikit_data_model.caikit_computer_vision import captionedimage_pb2
from caikit_data_model.common import producerid_pb2
from caikit_data_model.vision import image_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import ValidationError

from tti_contracts.routes import MODEL_HEADER
from tti_http.limits import ClientLimits
from tti_server import failures
from tti_server.errors import RETRY_AFTER_S, RETRY_CURES, describe_validation_errors
from tti_server.protocol import CaikitTextToImageRequest
from tti_server.service import Service

log = logging.getLogger(__name__)

SERVICE_NAME: str = computervisionservice_pb2.DESCRIPTOR.services_by_name[
    "ComputerVisionService"
].full_name
METHOD = f"/{SERVICE_NAME}/TextToImageTaskPredict"
#: gRPC's retry hint in trailing metadata: milliseconds to wait before a retry (gRFC A6).
PUSHBACK_KEY = "grpc-retry-pushback-ms"
#: The request's optional fields, passed on as caikit's `parameters` when set.
PARAMETERS = ("height", "width", "num_steps", "guidance_scale", "negative_prompt", "image_format")

#: The one place service errors become gRPC status codes (an error's nearest listed class wins).
GRPC_CODE: dict[type[failures.ServiceError], grpc.StatusCode] = {
    failures.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
    failures.UnknownModel: grpc.StatusCode.NOT_FOUND,
    failures.NotReady: grpc.StatusCode.UNAVAILABLE,
    failures.QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    failures.OutOfMemory: grpc.StatusCode.RESOURCE_EXHAUSTED,
    failures.EngineStopped: grpc.StatusCode.UNAVAILABLE,
    failures.GenerationTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    failures.GenerationFailed: grpc.StatusCode.INTERNAL,
    failures.ServiceError: grpc.StatusCode.INTERNAL,
}


class ComputerVisionServicer(computervisionservice_pb2_grpc.ComputerVisionServiceServicer):  # type: ignore[misc]
    def __init__(self, service: Service) -> None:
        self._service = service

    async def TextToImageTaskPredict(
        self, request: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Any:
        started = time.perf_counter()
        code = grpc.StatusCode.CANCELLED  # unless it ends another way
        try:
            body = caikit_request(request, context.invocation_metadata())
            result = await self._service.text_to_image(body, model_field=MODEL_HEADER)
            code = grpc.StatusCode.OK
            return captioned_image(result.image, result.caption, result.producer)
        except failures.ServiceError as exc:
            code = failures.lookup(GRPC_CODE, exc)
            if failures.lookup(RETRY_CURES, exc):
                context.set_trailing_metadata(((PUSHBACK_KEY, str(RETRY_AFTER_S * 1000)),))
            await context.abort(code, str(exc))
        except Exception:
            code = grpc.StatusCode.INTERNAL
            log.exception("unhandled error in %s", METHOD)
            await context.abort(code, "internal server error (see the server's log)")
        finally:
            elapsed = time.perf_counter() - started
            self._service.metrics.observe(METHOD, "GRPC", code.name, elapsed)


def caikit_request(request: Any, metadata: Any) -> CaikitTextToImageRequest:
    """The gRPC request as caikit's HTTP body: `mm-model-id`, `inputs`, the set parameters."""
    model_id = dict(metadata or ()).get(MODEL_HEADER)
    if not model_id:
        raise failures.InvalidInput(
            f"{MODEL_HEADER}: missing; name the served model in this metadata"
        )
    parameters = {name: getattr(request, name) for name in PARAMETERS if request.HasField(name)}
    body = {"model_id": model_id, "inputs": request.inputs, "parameters": parameters}
    try:
        return CaikitTextToImageRequest.model_validate(body)
    except ValidationError as exc:
        raise failures.InvalidInput(describe_validation_errors(exc.errors())) from None


def captioned_image(image: bytes, caption: str, producer: dict[str, str]) -> Any:
    return captionedimage_pb2.CaptionedImage(
        output=image_pb2.Image(image_data=image),
        caption=caption,
        producer_id=producerid_pb2.ProducerId(**producer),
    )


@dataclass
class GrpcServer:
    """A started gRPC server and the port it listens on."""

    server: grpc.aio.Server
    port: int
    health: Any
    watch: asyncio.Task[None]

    async def stop(self, grace: float) -> None:
        """NOT_SERVING at once, then let running calls finish for up to `grace` seconds."""
        self.watch.cancel()
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)


async def start_grpc_server(
    service: Service, host: str, port: int, limits: ClientLimits | None = None
) -> GrpcServer:
    """Serve the service, health and reflection on host:port (port 0: any free one).

    Health answers NOT_SERVING until the model is loaded and warm, then SERVING, for
    the whole server ("") and for the service by name.
    """
    server = grpc.aio.server(options=channel_options(limits or ClientLimits()))
    computervisionservice_pb2_grpc.add_ComputerVisionServiceServicer_to_server(
        ComputerVisionServicer(service), server
    )
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)
    bound = server.add_insecure_port(f"{_bracketed(host)}:{port}")
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.NOT_SERVING)
    await server.start()
    watch = asyncio.create_task(_serving_once_ready(service, health_servicer))
    log.info("gRPC: %s, health and reflection on %s:%d", SERVICE_NAME, host, bound)
    return GrpcServer(server, bound, health_servicer, watch)


def channel_options(limits: ClientLimits) -> list[tuple[str, int]]:
    """gRPC's server arguments for `limits`: metadata past the limit is refused every time
    (by default gRPC refuses some of what lies between its soft and hard limits)."""
    return [
        ("grpc.max_metadata_size", limits.max_header_bytes),
        ("grpc.absolute_max_metadata_size", limits.max_header_bytes),
        ("grpc.server_handshake_timeout_ms", int(limits.header_timeout * 1000)),
        ("grpc.max_connection_idle_ms", int(limits.keepalive_timeout * 1000)),
    ]


async def _serving_once_ready(service: Service, health_servicer: Any) -> None:
    await service.wait_ready()
    await _set_health(health_servicer, health_pb2.HealthCheckResponse.SERVING)


async def _set_health(health_servicer: Any, status: Any) -> None:
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, status)


def _bracketed(host: str) -> str:
    """An IPv6 address in brackets, as a gRPC target needs it."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
