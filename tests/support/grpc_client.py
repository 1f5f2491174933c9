"""A gRPC client for tests: stubs generated from the repository's protos, and helpers.

The stubs are the ones the package builds from `tti_server/grpc_api/protos/`
(importing `tti_server.grpc_api` puts the generated modules on `sys.path`).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import httpx

import tti_server.grpc_api  # noqa: F401  (puts the generated modules on sys.path)

import computervisionservice_pb2_grpc  # isort: skip
from ccv import texttoimagetaskrequest_pb2  # isort: skip

Request = texttoimagetaskrequest_pb2.TextToImageTaskRequest


@contextmanager
def vision_stub(target: str) -> Iterator[Any]:
    """`ComputerVisionServiceStub` on a fresh channel to `target` (host:port)."""
    with grpc.insecure_channel(target) as channel:
        yield computervisionservice_pb2_grpc.ComputerVisionServiceStub(channel)


def predict(stub: Any, model_id: str | None = "stub", timeout: float = 30, **fields: Any) -> Any:
    """Call TextToImageTaskPredict with `mm-model-id` (None: without it)."""
    metadata = [("mm-model-id", model_id)] if model_id is not None else []
    request = Request(**{"inputs": "a prompt", **fields})
    return stub.TextToImageTaskPredict(request, metadata=metadata, timeout=timeout)


def metric(url: str, name: str) -> float:
    """The value of one sample (`name` with its labels) of the server's /metrics."""
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_for_metric(url: str, name: str, value: float, timeout: float = 30) -> None:
    """Poll until the metric has the value (a wait, not a timed assertion)."""
    deadline = time.monotonic() + timeout
    while metric(url, name) != value:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} never became {value}")
        time.sleep(0.02)
