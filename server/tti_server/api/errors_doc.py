"""The error responses each generation route documents in OpenAPI."""

from __future__ import annotations

from typing import Any

from tti_server.protocol import ErrorResponse

GENERATION_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad input; `details` names the field"},
    404: {"model": ErrorResponse, "description": "The request names a model not served here"},
    503: {"model": ErrorResponse, "description": "Loading, queue full or out of memory"},
    504: {"model": ErrorResponse, "description": "Did not finish within the request timeout"},
}

#: caikit's route answers schema errors with 422 and unknown media types with 415, as
#: the caikit runtime does.
CAIKIT_ERRORS: dict[int | str, dict[str, Any]] = {
    **GENERATION_ERRORS,
    400: {"model": ErrorResponse, "description": "A value beyond a limit; `details` names it"},
    415: {"model": ErrorResponse, "description": "Neither JSON nor multipart/form-data"},
    422: {"model": ErrorResponse, "description": "Not the schema; `details` names the field"},
}
