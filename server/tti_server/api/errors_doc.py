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
