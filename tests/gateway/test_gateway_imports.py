"""The gateway runs in the operator's image: it must import neither torch nor FastAPI, nor
any of the server (the playground's files it serves are `tti_playground`'s, plain data)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "diffusers", "fastapi", "PIL", "grpc")


def test_the_gateway_imports_nothing_heavy() -> None:
    code = (
        "import sys, tti_gateway.app, tti_gateway.cli, tti_http.limits; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules)); "
        "print(','.join(sorted(m for m in sys.modules if m.split('.')[0] == 'tti_server')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    heavy, server = done.stdout.split("\n")[:2]
    assert heavy == ""
    assert server == ""
