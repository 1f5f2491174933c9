"""The server's app in this process, for tests that inject a backend (a real one wrapped to
fail on cue): `create_app` with the backends given, under a real uvicorn on a free loopback
port, on a thread of its own.

    with serve_in_thread(FailingBackend(tiny_backend), Settings(model="sdxl")) as url:
        httpx.post(url + "/v1/images/generations", json={...})
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn

from support.server import free_port
from tti_server.app import create_app
from tti_server.backends.base import Backend
from tti_server.settings import Settings

READY_TIMEOUT_S = 60.0


@contextlib.contextmanager
def serve_in_thread(backend: Backend, settings: Settings) -> Iterator[str]:
    """The app over `backend` with `settings`, served until the block ends; yields its URL
    once /readyz answers 200."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, backends=[backend]), host="127.0.0.1", port=port, log_level="error"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _ready(url):
            assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
            time.sleep(0.05)
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def _ready(url: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(url + "/readyz", timeout=2).status_code == 200
    return False
