"""pytest plugin: start real `tti-server` processes on free loopback ports.

    def test_something(start_server: StartServer) -> None:
        server = start_server("--model", "stub", "--max-queue", "2")
        httpx.get(server.url + "/health")

`start_server(*args, env=None, wait_ready=True)` starts `tti-server ARGS` (with
`--host 127.0.0.1`, a free `--port` and a free `--grpc-port` unless given), waits for `/readyz` to
answer 200 and returns a `ServerProcess`; every server started by a test is
stopped when the test ends. A server that exits before it is ready raises
`ServerExited` carrying its exit status and output, so a test can assert on a
failed start. `stub_server` is one shared stub server for a whole session.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pytest

READY_TIMEOUT_S = 120.0


class ServerExited(RuntimeError):
    """The server process ended before it became ready."""

    def __init__(self, returncode: int, output: str) -> None:
        super().__init__(f"tti-server exited with status {returncode}:\n{output}")
        self.returncode = returncode
        self.output = output


@dataclass
class ServerProcess:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path
    grpc_target: str = ""  # host:port of its gRPC API ("" with --grpc-port 0)
    metrics_url: str = ""  # a gateway's /metrics is on a port of its own

    def output(self) -> str:
        """Everything the server wrote to stdout and stderr so far."""
        return self.log_path.read_text(errors="replace")

    def wait_exit(self, timeout: float = 60.0) -> int:
        """Wait for the process to end by itself; return its exit status."""
        return self.process.wait(timeout=timeout)

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (graceful: uvicorn drains requests), then SIGKILL if it hangs."""
        return stop_process(self.process, timeout)


class StartServer(Protocol):
    def __call__(
        self, *args: str, env: Mapping[str, str] | None = None, wait_ready: bool = True
    ) -> ServerProcess: ...


def server_command() -> list[str]:
    """The installed `tti-server` console script next to this interpreter, else `-m`."""
    script = Path(sys.executable).with_name("tti-server")
    if script.exists():
        return [str(script)]
    found = shutil.which("tti-server")
    return [found] if found else [sys.executable, "-m", "tti_server"]


def stop_process(process: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL after `timeout`: the process is gone when this returns."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def launch_server(
    args: tuple[str, ...] | list[str],
    log_dir: Path,
    env: Mapping[str, str] | None = None,
    wait_ready: bool = True,
    ready_timeout: float = READY_TIMEOUT_S,
) -> ServerProcess:
    """Start a server; with `wait_ready`, return once `/readyz` is 200 (or raise)."""
    args = list(args)
    if "--port" not in args:
        args += ["--port", str(free_port())]
    if "--grpc-port" not in args:
        args += ["--grpc-port", str(free_port())]
    if "--host" not in args:
        args += ["--host", "127.0.0.1"]
    port = args[args.index("--port") + 1]
    grpc_port = args[args.index("--grpc-port") + 1]
    # Hermetic: the caller's TTI_* settings must not leak into the server under test.
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("TTI_")}
    full_env = {**base_env, "PYTHONUNBUFFERED": "1", **(env or {})}
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"tti-server-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [*server_command(), *args], stdout=log, stderr=subprocess.STDOUT, env=full_env
        )
    grpc_target = f"127.0.0.1:{grpc_port}" if grpc_port != "0" else ""
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path, grpc_target)
    if wait_ready:
        try:
            wait_until_ready(server, ready_timeout)
        except BaseException:
            server.stop()
            raise
    return server


def wait_until_ready(server: ServerProcess, timeout: float = READY_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise ServerExited(server.process.returncode, server.output())
        with (
            contextlib.suppress(OSError, urllib.error.URLError),
            urllib.request.urlopen(server.url + "/readyz", timeout=2) as response,
        ):
            if response.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"tti-server not ready within {timeout:g} s:\n{server.output()}")


@contextlib.contextmanager
def running_server(
    *args: str, log_dir: Path, env: Mapping[str, str] | None = None
) -> Iterator[ServerProcess]:
    server = launch_server(args, log_dir, env)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Factory: start `tti-server` processes; all are stopped after the test."""
    started: list[ServerProcess] = []

    def start(
        *args: str, env: Mapping[str, str] | None = None, wait_ready: bool = True
    ) -> ServerProcess:
        server = launch_server(args, tmp_path / "server-logs", env, wait_ready)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="session")
def stub_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One stub server with default settings, shared by the whole session."""
    with running_server("--model", "stub", log_dir=tmp_path_factory.mktemp("stub")) as server:
        yield server
