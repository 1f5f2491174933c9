"""The one error envelope, `{"code", "details", "id"}`, and the request-id rules.

tti-server answers every error with it (caikit's runtime answers the same shape), and the
gateway answers its own errors with it, so a client sees one envelope whoever answered.
The request id travels in `X-Request-Id`: a client's own is kept when it is a sane token
(the gateway forwards it, the server echoes it), otherwise a fresh one is made.
"""

from __future__ import annotations

import json
import random
import re

REQUEST_ID_HEADER = "X-Request-Id"
_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def error_body(status: int, details: str, request_id: str) -> bytes:
    """The envelope as the JSON bytes of a response body."""
    return json.dumps({"code": status, "details": details, "id": request_id}).encode()


def request_id(client_value: str | None) -> str:
    """The client's X-Request-Id when it is a sane token, else a fresh one."""
    if client_value and _CLIENT_ID.match(client_value):
        return client_value
    # 128 random bits like uuid4, but without a getrandom() syscall per request.
    return f"{random.getrandbits(128):032x}"
