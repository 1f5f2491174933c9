"""pytest plugin: start real `tti-gateway` processes on free loopback ports.

    def test_something(start_gateway: StartGateway, start_server: StartServer) -> None:
        server = start_server("--model", "stub")
        gateway = start_gateway("--models", f"stub={server.url}")

`write_secret_volume(directory, {key: text}, version)` lays files out as the kubelet does
for a mounted Secret, and updates them the same way (a symlink swap), for the tokens file.

`start_gateway(*args, env=None)` adds `--host 127.0.0.1`, a free `--port` and a free
`--metrics-port` (unless given: its `/metrics` is at `gateway.metrics_url + "/metrics"`),
waits for `/readyz` (the endpoint table probed once) and stops the gateway after the test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Protocol

import httpx
import pytest

from support.server import ServerProcess, free_port, wait_until_ready
from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE


def write_secret_volume(directory: Path, files: Mapping[str, str], version: int) -> None:
    """A Secret volume as the kubelet writes it: each key is a symlink `KEY -> ..data/KEY`,
    and `..data` a symlink to a timestamped directory, which an update replaces with a
    rename of a new symlink over `..data` (atomic: a reader sees the old or the new)."""
    data = directory / f"..v{version}"
    data.mkdir(parents=True)
    for key, text in files.items():
        (data / key).write_text(text)
    staged = directory / "..data_tmp"
    staged.symlink_to(data.name)
    os.replace(staged, directory / "..data")
    for key in files:
        if not (directory / key).is_symlink():
            (directory / key).symlink_to(f"..data/{key}")


class StartGateway(Protocol):
    def __call__(self, *args: str, env: Mapping[str, str] | None = None) -> ServerProcess: ...


def gateway_command() -> list[str]:
    script = Path(sys.executable).with_name("tti-gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "tti_gateway"]


def launch_gateway(
    args: tuple[str, ...], log_dir: Path, env: Mapping[str, str] | None = None
) -> ServerProcess:
    port = free_port()
    if "--metrics-port" not in args:
        args = (*args, "--metrics-port", str(free_port()))
    metrics_port = args[args.index("--metrics-port") + 1]
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TTI_")}
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"tti-gateway-{port}.log"
    command = [*gateway_command(), "--host", "127.0.0.1", "--port", str(port), *args]
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env={**base_env, **(env or {})}
        )
    gateway = ServerProcess(
        f"http://127.0.0.1:{port}",
        process,
        log_path,
        metrics_url=f"http://127.0.0.1:{metrics_port}",
    )
    try:
        wait_until_ready(gateway, timeout=30)
    except BaseException:
        gateway.stop()
        raise
    return gateway


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[StartGateway]:
    started: list[ServerProcess] = []

    def start(*args: str, env: Mapping[str, str] | None = None) -> ServerProcess:
        gateway = launch_gateway(args, tmp_path / "gateway-logs", env)
        started.append(gateway)
        return gateway

    yield start
    for gateway in started:
        gateway.stop()


def call_as(
    gateway: ServerProcess, model: str, token: str | None, timeout: float = 30
) -> httpx.Response:
    """A caikit request for `model` through the gateway, with `token` (None: no header)."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    body = {"model_id": model, "inputs": "a fox", "parameters": {"height": 64, "width": 64}}
    return httpx.post(
        gateway.url + CAIKIT_TEXT_TO_IMAGE, json=body, headers=headers, timeout=timeout
    )
