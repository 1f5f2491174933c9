"""The playground page at the gateway's `/`: the same three files as tti-server's, with the
same headers (`tti_playground`, plain data: no FastAPI comes with them).

Through the gateway the page lists every model (`GET /v1/models`, with each one's state)
and offers a picker. The files need no token: the page asks for one when the API answers
401. `--playground false` leaves these routes out (404).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tti_playground import ASSETS, HEADERS, read


def _serve(name: str, media_type: str) -> Callable[[Request], Awaitable[Response]]:
    body = read(name)

    async def serve(_request: Request) -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    return serve


def routes() -> list[Route]:
    """One GET route per file of the page."""
    return [
        Route(path, _serve(name, media_type), methods=["GET"]) for path, name, media_type in ASSETS
    ]
