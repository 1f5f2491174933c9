"""The playground: a page at `/` for trying the model in a browser.

Three static files (`tti_server/playground/`), no build step and nothing fetched from
elsewhere. The page calls the same public routes as any client (`/v1/models`, `/readyz`,
`/v1/images/generations`), so it cannot drift from the API. `--playground false` leaves
these routes out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from importlib.resources import files

from fastapi import APIRouter
from starlette.responses import Response

router = APIRouter(include_in_schema=False)

#: The page may load and call only its own origin; images are shown from blob: URLs.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self' blob:; "
    "img-src 'self' blob:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
#: (route, file, media type)
ASSETS = (
    ("/", "index.html", "text/html; charset=utf-8"),
    ("/playground.js", "playground.js", "text/javascript; charset=utf-8"),
    ("/playground.css", "playground.css", "text/css; charset=utf-8"),
)


def _serve(name: str, media_type: str) -> Callable[[], Awaitable[Response]]:
    body = (files("tti_server") / "playground" / name).read_bytes()

    async def serve() -> Response:
        return Response(body, media_type=media_type, headers=HEADERS)

    serve.__name__ = f"playground_{name.replace('.', '_')}"
    return serve


for _path, _name, _media_type in ASSETS:
    router.add_api_route(_path, _serve(_name, _media_type), methods=["GET"])
