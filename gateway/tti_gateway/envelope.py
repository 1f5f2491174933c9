"""The gateway's own error answers, in the envelope every model answers with
(`tti_contracts.envelope`), so a client sees one shape whoever answered."""

from __future__ import annotations

from collections.abc import Mapping

from starlette.responses import Response

from tti_contracts.envelope import REQUEST_ID_HEADER, error_body


def error_response(
    status: int, details: str, request_id: str, headers: Mapping[str, str] | None = None
) -> Response:
    all_headers = {REQUEST_ID_HEADER: request_id, **(headers or {})}
    return Response(
        error_body(status, details, request_id), status, all_headers, media_type="application/json"
    )
