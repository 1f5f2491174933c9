"""Fixtures for the server tests: the same stub server reached two ways.

`api` is an `httpx.Client` for a server with the contract settings below, once
through a real uvicorn process on a loopback port and once in-process (the ASGI
app driven by Starlette's TestClient, lifespan included). Contract tests take
`api` and so run against both.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from support.server import ServerProcess, running_server

from tti_server.app import create_app
from tti_server.settings import Settings

#: Small limits so the tests can exceed them cheaply.
CONTRACT_FLAGS = ("--max-prompt-length", "100", "--max-side", "1024", "--max-steps", "8")
CONTRACT_SETTINGS = {"max_prompt_length": 100, "max_side": 1024, "max_steps": 8}


@pytest.fixture(scope="session")
def contract_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log_dir = tmp_path_factory.mktemp("contract")
    with running_server("--model", "stub", *CONTRACT_FLAGS, log_dir=log_dir) as server:
        yield server


@pytest.fixture(scope="session")
def in_process_client() -> Iterator[httpx.Client]:
    app = create_app(Settings(model="stub", **CONTRACT_SETTINGS))
    with TestClient(app, raise_server_exceptions=False) as client:
        wait_ready(client)
        yield client


@pytest.fixture(scope="session", params=["uvicorn", "in-process"])
def api(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[httpx.Client]:
    if request.param == "in-process":
        yield request.getfixturevalue("in_process_client")
        return
    server: ServerProcess = request.getfixturevalue("contract_server")
    with httpx.Client(base_url=server.url, timeout=30) as client:
        yield client


def wait_ready(client: httpx.Client, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/readyz").status_code != 200:
        if time.monotonic() > deadline:
            raise TimeoutError("the in-process app did not become ready")
        time.sleep(0.02)


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    return tmp_path / "logs"
