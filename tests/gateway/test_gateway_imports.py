"""The gateway runs in the operator's image: it must import neither torch nor FastAPI."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torch", "diffusers", "fastapi", "tti_server")


def test_the_gateway_imports_nothing_heavy() -> None:
    code = (
        "import sys, tti_gateway.app, tti_gateway.cli; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == ""
