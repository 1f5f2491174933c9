"""One error envelope, `{"code", "details", "id"}`, for every error the server returns.

Handlers here turn our own errors, FastAPI's validation errors, Starlette's
404/405 and any unexpected exception into that envelope. Bodies never carry a
traceback; the log does.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from tti_server.engine import (
    EngineError,
    EngineStopped,
    GenerationFailed,
    GenerationTimeout,
    OutOfMemory,
    QueueFull,
)

log = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
#: Seconds a client is told to wait after a 503 because the queue was full.
RETRY_AFTER_S = 1
_MAX_LISTED_ERRORS = 3


class APIError(Exception):
    """An error with a status code and a message meant for the client."""

    def __init__(self, details: str, status: int, headers: Mapping[str, str] | None = None):
        super().__init__(details)
        self.details = details
        self.status = status
        self.headers = dict(headers or {})


class InvalidRequest(APIError):
    """Bad input: 400 unless told otherwise (404 for an unknown model)."""

    def __init__(self, details: str, status: int = 400) -> None:
        super().__init__(details, status)


class NotReady(APIError):
    def __init__(self, details: str) -> None:
        super().__init__(details, 503, {"Retry-After": str(RETRY_AFTER_S)})


def request_id(request: Request) -> str:
    return str(getattr(request.state, "request_id", "") or "")


def error_response(
    request: Request, status: int, details: str, headers: Mapping[str, str] | None = None
) -> Response:
    rid = request_id(request)
    body = json.dumps({"code": status, "details": details, "id": rid}).encode()
    all_headers = {REQUEST_ID_HEADER: rid, **(headers or {})}
    return Response(body, status, all_headers, media_type="application/json")


def engine_error_status(error: EngineError) -> tuple[int, dict[str, str]]:
    """The status (and headers) a client sees for each way the engine can refuse or fail."""
    retry = {"Retry-After": str(RETRY_AFTER_S)}
    if isinstance(error, QueueFull | OutOfMemory | EngineStopped):
        return 503, retry
    if isinstance(error, GenerationTimeout):
        return 504, {}
    if isinstance(error, GenerationFailed):
        return 500, {}
    return 500, {}


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


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, APIError)
    return error_response(request, exc.status, exc.details, exc.headers)


async def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    status, headers = engine_error_status(exc)
    return error_response(request, status, str(exc), headers)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(request, 400, describe_validation_errors(exc.errors()))


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
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
