"""The playground: a page at `/` for trying the model in a browser.

Three static files (`tti_server/playground/`), no build step and nothing fetched from
elsewhere. The page calls the same public routes as any client (`/v1/models`, `/readyz`,
`/v1/images/generations`), so it cannot drift from the API. `--playground false` leaves
these routes out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from starlette.responses import Response

from tti_playground import ASSETS, HEADERS, read

router = APIRouter(include_in_schema=False)


def _serve(name: str, media_type: str) -> Callable[[], Awaitable[Response]]:
    body = read(name)

    async def serve() -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    serve.__name__ = f"playground_{name.replace('.', '_')}"
    return serve


for _path, _name, _media_type in ASSETS:
    router.add_api_route(_path, _serve(_name, _media_type), methods=["GET"])
