"""The server's error envelope, `{"code", "details", "id"}`, for the gateway's own answers.

The same shape as `tti_server.errors` (which the gateway cannot import without FastAPI
and the engine), so a client sees one envelope whether the gateway or a model answered.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Mapping

from starlette.responses import Response

REQUEST_ID_HEADER = "X-Request-Id"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def error_response(
    status: int, details: str, request_id: str, headers: Mapping[str, str] | None = None
) -> Response:
    body = json.dumps({"code": status, "details": details, "id": request_id}).encode()
    all_headers = {REQUEST_ID_HEADER: request_id, **(headers or {})}
    return Response(body, status, all_headers, media_type="application/json")


def request_id(client_value: str | None) -> str:
    """The client's X-Request-Id when it is a sane token (it is forwarded), else a fresh one."""
    if client_value and _CLIENT_ID.match(client_value):
        return client_value
    return f"{random.getrandbits(128):032x}"
