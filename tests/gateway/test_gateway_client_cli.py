"""`tti generate --api-key` against a real gateway with auth on, in front of a real stub server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from support.gateway import StartGateway
from support.server import ServerProcess, StartServer

from tti_server.backends.stub import STUB_COLOR

pytestmark = pytest.mark.slow

TOKEN = "cli-s3cret"
REFUSED = (
    "tti: error: server answered 401: authorization: a valid bearer token is required "
    "(Authorization: Bearer TOKEN)\n"
)


def tti(*args: str, api_key: str | None = None) -> subprocess.CompletedProcess[str]:
    """The installed `tti`, with `TTI_API_KEY` set to `api_key` (None: unset)."""
    script = Path(sys.executable).with_name("tti")
    command = (
        [str(script)] if script.exists() else [sys.executable, "-m", "tti_server.tools.client"]
    )
    env = {k: v for k, v in os.environ.items() if k != "TTI_API_KEY"}
    if api_key is not None:
        env["TTI_API_KEY"] = api_key
    return subprocess.run([*command, *args], capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture
def locked_gateway(
    start_server: StartServer, start_gateway: StartGateway, tmp_path: Path
) -> ServerProcess:
    server = start_server("--model", "stub", "--model-id", "alpha", "--grpc-port", "0")
    tokens = tmp_path / "tokens"
    tokens.write_text(TOKEN + "\n")
    return start_gateway("--models", f"alpha={server.url}", "--auth-tokens-file", str(tokens))


def generate(gateway: ServerProcess, out: Path, *args: str, api_key: str | None = None) -> str:
    """`tti generate` of a 24x40 image into `out` through the gateway: its stderr."""
    result = tti(
        "generate", "a fox", "--url", gateway.url, "--model-id", "alpha",
        "--width", "24", "--height", "40", "-o", str(out), *args, api_key=api_key,
    )  # fmt: skip
    assert (result.returncode == 0) == out.exists(), result
    return result.stderr


def test_api_key_writes_the_image(locked_gateway: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    assert generate(locked_gateway, out, "--api-key", TOKEN) == ""
    with Image.open(out) as image:
        assert (image.format, image.size) == ("PNG", (24, 40))
        assert image.convert("RGB").getpixel((0, 0)) == STUB_COLOR


def test_the_api_key_defaults_to_tti_api_key(locked_gateway: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "fox.webp"
    assert generate(locked_gateway, out, api_key=TOKEN) == ""
    with Image.open(out) as image:
        assert image.format == "WEBP"


def test_no_token_or_a_wrong_one_is_one_line_naming_the_401(
    locked_gateway: ServerProcess, tmp_path: Path
) -> None:
    assert generate(locked_gateway, tmp_path / "none.png") == REFUSED
    wrong = generate(locked_gateway, tmp_path / "wrong.png", "--api-key", "guess")
    assert wrong == REFUSED
    # The flag wins over the variable.
    flag = generate(locked_gateway, tmp_path / "flag.png", "--api-key", "guess", api_key=TOKEN)
    assert flag == REFUSED
