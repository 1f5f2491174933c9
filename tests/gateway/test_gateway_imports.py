"""The gateway runs in the operator's image: it must import neither torch nor FastAPI.

Of `tti_server` it takes only the playground's files (`tti_server.playground`, plain data)
and, when it starts serving, the HTTP limits it shares with the server
(`tti_server.http_limits`: uvicorn and httptools, which the gateway has anyway).
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "diffusers", "fastapi", "PIL", "grpc")
#: The only parts of the server package the gateway may load.
SHARED = {"tti_server", "tti_server.playground", "tti_server.http_limits"}


def test_the_gateway_imports_nothing_heavy() -> None:
    code = (
        "import sys, tti_gateway.app, tti_gateway.cli, tti_server.http_limits; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules)); "
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'tti_server')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, server = done.stdout.split("\n")[:2]
    assert heavy == ""
    assert set(filter(None, server.split(","))) <= SHARED
