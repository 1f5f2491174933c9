"""The playground page's files and the headers they are served with, for any framework.

`tti-server` serves them at its `/` (`tti_server.api.playground`), the gateway at its own
(`tti_gateway.playground`): plain bytes and headers here, so the gateway needs no FastAPI.
"""

from __future__ import annotations

from importlib.resources import files

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


def read(name: str) -> bytes:
    return (files(__name__) / name).read_bytes()
