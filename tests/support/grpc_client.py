"""A gRPC client for tests: stubs generated from the repository's protos, and helpers.

The stubs are the ones the package builds from `tti_server/grpc_api/protos/`
(importing `tti_server.grpc_api` puts the generated modules on `sys.path`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc

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
