"""One error envelope (`tti_contracts.envelope`) for every error the server returns.

Handlers here turn the service's transport-neutral errors (through `HTTP_STATUS`,
the one table of their HTTP statuses), FastAPI's validation errors, Starlette's
404/405 and any unexpected exception into that envelope. Bodies never carry a
traceback; the log does.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tti_contracts.envelope import REQUEST_ID_HEADER, error_body
from tti_server.failures import (
    EngineStopped,
    GenerationFailed,
    GenerationTimeout,
    InvalidInput,
    NotReady,
    OutOfMemory,
    QueueFull,
    QueueTimeout,
    ServiceError,
    UnknownModel,
    lookup,
)

log = logging.getLogger(__name__)

#: Seconds a client is told to wait before retrying an error a retry may cure (`RETRY_CURES`).
RETRY_AFTER_S = 1
_MAX_LISTED_ERRORS = 3


#: The one place service errors become HTTP statuses (an error's nearest listed class wins).
HTTP_STATUS: dict[type[ServiceError], int] = {
    InvalidInput: 400,
    UnknownModel: 404,
    NotReady: 503,
    QueueFull: 503,
    OutOfMemory: 503,
    EngineStopped: 503,
    GenerationTimeout: 504,
    GenerationFailed: 500,
    ServiceError: 500,
}

#: Whether a retry may cure the error (the nearest listed class wins): the answer then says
#: when to retry, as `Retry-After` on HTTP and `grpc-retry-pushback-ms` on gRPC. A request
#: that timed out while generating, or that is wrong, would fail the same way again.
RETRY_CURES: dict[type[ServiceError], bool] = {
    NotReady: True,
    QueueFull: True,
    OutOfMemory: True,
    EngineStopped: True,  # another replica, or this one restarted
    QueueTimeout: True,
    ServiceError: False,
}


class HTTPOnlyError(Exception):
    """An error only HTTP has (a media type it cannot read): status and message."""

    def __init__(self, details: str, status: int) -> None:
        super().__init__(details)
        self.details = details
        self.status = status


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def error_response(
    request: Request, status: int, details: str, headers: Mapping[str, str] | None = None
) -> Response:
    rid = request_id(request)
    body = error_body(status, details, rid)
    all_headers = {REQUEST_ID_HEADER: rid, **(headers or {})}
    return Response(body, status, all_headers, media_type="application/json")


def service_error_status(error: ServiceError) -> tuple[int, dict[str, str]]:
    """The status (and headers) a client sees for a service error; those a retry may cure
    say when to retry."""
    retry = lookup(RETRY_CURES, error)
    return lookup(HTTP_STATUS, error), ({"Retry-After": str(RETRY_AFTER_S)} if retry else {})


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """`parameters.height: Input should be a valid integer; ...`, naming each field."""
    parts = [_describe_one(error) for error in errors[:_MAX_LISTED_ERRORS]]
    if len(errors) > _MAX_LISTED_ERRORS:
        parts.append(f"and {len(errors) - _MAX_LISTED_ERRORS} more")
    return "; ".join(parts) or "invalid request"


def _describe_one(error: Mapping[str, Any]) -> str:
    loc = [str(part) for part in error.get("loc", ()) if part != "body"]
    kind = error.get("type", "")
    if kind == "json_invalid":
        reason = (error.get("ctx") or {}).get("error", "malformed")
        where = f" at position {loc[0]}" if loc else ""  # pydantic-core puts it in the reason
        return f"body: invalid JSON ({reason}{where})"
    field = ".".join(loc) or "body"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if field == "body" and kind in {"model_attributes_type", "dict_type"}:
        message = "expected a JSON object (send Content-Type: application/json)"
    return f"{field}: {message}"


async def _service_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServiceError)
    status, headers = service_error_status(exc)
    return error_response(request, status, str(exc), headers)


async def _http_only_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPOnlyError)
    return error_response(request, exc.status, exc.details)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # caikit's route answers schema errors as caikit does (422); the OpenAI routes, 400.
    status = getattr(request.scope.get("route"), "schema_error_status", 400)
    return error_response(request, status, describe_validation_errors(exc.errors()))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    details = str(exc.detail)
    if exc.status_code == 404:
        details = f"path: no route for {request.url.path}"
    elif exc.status_code == 405:
        details = f"method: {request.method} is not allowed on {request.url.path}"
    return error_response(request, exc.status_code, details, exc.headers)


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    # Starlette re-raises after this answer, so the server logs the traceback itself.
    rid = request_id(request)
    log.error(
        "unhandled %s in %s %s (request %s)",
        type(exc).__name__,
        request.method,
        request.url.path,
        rid,
    )
    return error_response(request, 500, f"internal server error (request {rid}; see the log)")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(HTTPOnlyError, _http_only_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
