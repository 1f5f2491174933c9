"""caikit's gRPC API against a real `tti-server` process, with a real grpcio client.

Every status code the servicer maps, the client's deadline and cancellation (the
request leaves the queue), health, reflection, batching across concurrent calls,
and the caikit sample client compiled from the protos as a caikit user would.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from support.clients import image_of, metric, wait_for_metric
from support.grpc_client import predict, vision_stub
from support.server import ServerProcess, StartServer

from tti_server.backends.stub import STUB_COLOR, StubBackend
from tti_server.grpc_api import PROTOS
from tti_server.grpc_api.server import SERVICE_NAME, start_grpc_server
from tti_server.service import Service
from tti_server.settings import Settings

ROUTE = 'route="/ccv.ComputerVisionService/TextToImageTaskPredict"'
GRPC_OK = f'tti_requests_total{{method="GRPC",{ROUTE},status="OK"}}'


@pytest.fixture
def server(contract_server: ServerProcess) -> ServerProcess:
    """The stub server the contract tests share (conftest.py), its gRPC API on."""
    return contract_server


@pytest.fixture
def stub(server: ServerProcess) -> Iterator[Any]:
    with vision_stub(server.grpc_target) as client:
        yield client


def test_the_stub_image_as_caikit_answers(stub: Any, server: ServerProcess) -> None:
    answer = predict(stub, inputs="a blue square", height=60, width=100)
    image = image_of(answer.output.image_data)
    assert (image.format, image.size, image.getpixel((3, 3))) == ("PNG", (100, 60), STUB_COLOR)
    assert answer.caption == "a blue square"
    assert (answer.producer_id.name, answer.producer_id.version) == ("tti-server stub", "0.1.0")
    assert metric(server.url, GRPC_OK) >= 1


def test_every_parameter(stub: Any) -> None:
    answer = predict(
        stub,
        height=16,
        width=24,
        num_steps=2,
        guidance_scale=1.5,
        negative_prompt="blurry",
        image_format="JPEG",
    )
    image = image_of(answer.output.image_data)
    assert (image.format, image.size) == ("JPEG", (24, 16))


def test_unset_sizes_take_the_default(stub: Any) -> None:
    assert image_of(predict(stub, image_format="webp").output.image_data).size == (512, 512)


BAD: list[tuple[dict[str, Any], grpc.StatusCode, tuple[str, ...]]] = [
    ({"model_id": None}, grpc.StatusCode.INVALID_ARGUMENT, ("mm-model-id", "missing")),
    ({"model_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, ("mm-model-id", "missing")),
    ({"model_id": "sdxl"}, grpc.StatusCode.NOT_FOUND, ("mm-model-id", "'sdxl'", "'stub'")),
    ({"height": 0}, grpc.StatusCode.INVALID_ARGUMENT, ("parameters.height", "greater than 0")),
    ({"width": -8}, grpc.StatusCode.INVALID_ARGUMENT, ("parameters.width", "greater than 0")),
    ({"height": 1025}, grpc.StatusCode.INVALID_ARGUMENT, ("parameters.height", "1024")),
    ({"num_steps": 9}, grpc.StatusCode.INVALID_ARGUMENT, ("parameters.num_steps", "8")),
    ({"num_steps": 0}, grpc.StatusCode.INVALID_ARGUMENT, ("parameters.num_steps",)),
    ({"guidance_scale": -1}, grpc.StatusCode.INVALID_ARGUMENT, ("parameters.guidance_scale",)),
    ({"guidance_scale": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, ("guidance_scale",)),
    ({"image_format": "gif"}, grpc.StatusCode.INVALID_ARGUMENT, ("parameters.image_format",)),
    ({"inputs": "x" * 101}, grpc.StatusCode.INVALID_ARGUMENT, ("inputs", "maximum of 100")),
    ({"negative_prompt": "n" * 101}, grpc.StatusCode.INVALID_ARGUMENT, ("negative_prompt",)),
]


@pytest.mark.parametrize(("call", "code", "fragments"), BAD)
def test_bad_calls_get_their_code(
    stub: Any, server: ServerProcess, call: dict[str, Any], code: grpc.StatusCode, fragments: Any
) -> None:
    with pytest.raises(grpc.RpcError) as raised:
        predict(stub, **call)
    assert raised.value.code() == code
    for fragment in fragments:
        assert fragment in raised.value.details()
    assert "Traceback" not in raised.value.details()
    assert f'method="GRPC",{ROUTE},status="{code.name}"' in httpx.get(server.url + "/metrics").text
    assert predict(stub).caption == "a prompt"  # still serving


def test_an_empty_prompt_is_taken_as_caikits_modules_take_it(stub: Any) -> None:
    assert predict(stub, inputs="", height=8, width=8).caption == ""


def test_a_full_queue_is_resource_exhausted(start_server: StartServer) -> None:
    # One worker busy for 2 s and room for one waiting call: of 6 calls sent together,
    # at most 2 are accepted before the first finishes.
    server = start_server("--stub-latency-ms", "2000", "--max-queue", "1", "--max-batch-size", "1")
    with vision_stub(server.grpc_target) as client, ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda i: _code_of(client, inputs=f"p{i}"), range(6)))
        assert outcomes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 4
        assert set(outcomes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
        assert predict(client).caption == "a prompt"


def test_the_server_timeout_is_deadline_exceeded(start_server: StartServer) -> None:
    server = start_server("--stub-latency-ms", "3000", "--request-timeout", "0.5")
    with vision_stub(server.grpc_target) as client, pytest.raises(grpc.RpcError) as raised:
        predict(client)
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert raised.value.details() == "the request did not finish within 0.5 s"


@pytest.mark.parametrize("give_up", ["deadline", "cancel"])
def test_a_call_given_up_leaves_the_queue(start_server: StartServer, give_up: str) -> None:
    # A holds the only worker; B waits in the queue (room for one) until the client's
    # deadline or cancel; then the queue is empty while A still runs, so C is accepted.
    server = start_server("--stub-latency-ms", "4000", "--max-queue", "1", "--max-batch-size", "1")
    running, waiting = "tti_running", "tti_queue_depth"
    with vision_stub(server.grpc_target) as client:
        call_a = _send(client, "a")
        wait_for_metric(server.url, running, 1)
        timeout = 0.5 if give_up == "deadline" else 60
        call_b = _send(client, "b", timeout=timeout)
        wait_for_metric(server.url, waiting, 1)
        if give_up == "cancel":
            call_b.cancel()
        with pytest.raises(grpc.FutureCancelledError if give_up == "cancel" else grpc.RpcError):
            call_b.result()
        wait_for_metric(server.url, waiting, 0)
        assert metric(server.url, running) == 1  # A still runs: B left the queue itself
        call_c = _send(client, "c")
        assert (call_a.result().caption, call_c.result().caption) == ("a", "c")
    if give_up == "deadline":
        assert call_b.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert metric(server.url, "tti_images_generated_total") == 2  # B never ran


def test_concurrent_calls_are_batched_with_http_ones(start_server: StartServer) -> None:
    server = start_server("--max-batch-size", "8", "--batch-wait-ms", "300")
    http_body = {"inputs": "h", "parameters": {"height": 32, "width": 32}}

    def over_http(_: int) -> int:
        return httpx.post(server.url + "/api/v1/task/text-to-image", json=http_body).status_code

    with vision_stub(server.grpc_target) as client, ThreadPoolExecutor(16) as pool:
        calls = [pool.submit(predict, client, inputs="g", height=32, width=32) for _ in range(8)]
        answers = list(pool.map(over_http, range(8)))
        assert [call.result().caption for call in calls] == ["g"] * 8
    assert answers == [200] * 8
    assert metric(server.url, "tti_images_generated_total") == 16
    assert metric(server.url, 'tti_batches_total{outcome="ok"}') < 16  # some held several


def test_health_is_serving_for_the_server_and_the_service(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE_NAME):
            answer = health.Check(health_pb2.HealthCheckRequest(service=name), timeout=10)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
        with pytest.raises(grpc.RpcError) as raised:
            health.Check(health_pb2.HealthCheckRequest(service="nothing.Here"), timeout=10)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_describes_the_service_as_caikit_exports_it(server: ServerProcess) -> None:
    with grpc.insecure_channel(server.grpc_target) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        assert set(database.get_services()) == {
            "ccv.ComputerVisionService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1alpha.ServerReflection",
        }
        pool = DescriptorPool(database)
        service = pool.FindServiceByName("ccv.ComputerVisionService")
        method = service.FindMethodByName("TextToImageTaskPredict")
        assert service.file.name == "computervisionservice.proto"
        assert method.input_type.full_name == "ccv.TextToImageTaskRequest"
        assert method.input_type.file.name == "ccv.texttoimagetaskrequest.proto"
        assert method.output_type.full_name == (
            "caikit_data_model.caikit_computer_vision.CaptionedImage"
        )
        fields = {f.name: f.number for f in method.input_type.fields}
        assert fields == {
            "inputs": 1,
            "height": 2,
            "width": 3,
            "num_steps": 4,
            "guidance_scale": 5,
            "negative_prompt": 6,
            "image_format": 7,
        }


SAMPLE_CLIENT = """
import io, sys
import grpc
from PIL import Image
import computervisionservice_pb2_grpc
from ccv import texttoimagetaskrequest_pb2

channel = grpc.insecure_channel(sys.argv[1])
inference_stub = computervisionservice_pb2_grpc.ComputerVisionServiceStub(channel=channel)
inference_request = texttoimagetaskrequest_pb2.TextToImageTaskRequest(
    inputs="A golden retriever sitting in a grassy field", height=512, width=512
)
response = inference_stub.TextToImageTaskPredict(
    inference_request, metadata=[("mm-model-id", "stub")], timeout=60
)
Image.open(io.BytesIO(response.output.image_data)).save(sys.argv[2])
"""


def test_the_caikit_sample_client_compiled_from_the_protos(
    server: ServerProcess, tmp_path: Path
) -> None:
    # As the seed's README says: compile the exported protos, then run sample_client.py.
    generated = tmp_path / "generated"
    generated.mkdir()
    protos = sorted(str(p) for p in PROTOS.glob("*.proto"))
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTOS}"]
    outputs = [f"--python_out={generated}", f"--grpc_python_out={generated}"]
    subprocess.run([*protoc, *outputs, *protos], check=True)
    (tmp_path / "sample_client.py").write_text(SAMPLE_CLIENT)
    out = tmp_path / "stub_response_image.png"
    env = {**os.environ, "PYTHONPATH": str(generated)}
    subprocess.run(
        [sys.executable, str(tmp_path / "sample_client.py"), server.grpc_target, str(out)],
        check=True,
        env=env,
        cwd=tmp_path,
    )
    assert image_of(out.read_bytes()).size == (512, 512)


def test_no_grpc_with_port_0(start_server: StartServer) -> None:
    server = start_server("--grpc-port", "0")
    assert server.grpc_target == ""
    assert "gRPC" not in server.output()


def test_unavailable_and_not_serving_until_the_model_is_ready() -> None:
    gate = threading.Event()

    def slow_loader(settings: Settings) -> list[StubBackend]:
        gate.wait()
        return [StubBackend()]

    with _in_process_grpc(Service(Settings(), loader=slow_loader)) as target:
        with vision_stub(target) as client, pytest.raises(grpc.RpcError) as raised:
            predict(client)
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "loading" in raised.value.details()
        with grpc.insecure_channel(target) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            request = health_pb2.HealthCheckRequest(service="")
            assert health.Check(request).status == health_pb2.HealthCheckResponse.NOT_SERVING
            gate.set()
            updates = health.Watch(request, timeout=30)
            statuses = (update.status for update in updates)
            assert health_pb2.HealthCheckResponse.SERVING in statuses
            updates.cancel()
        with vision_stub(target) as client:
            assert predict(client).caption == "a prompt"


def _code_of(client: Any, **fields: Any) -> grpc.StatusCode:
    try:
        predict(client, **fields)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def _send(client: Any, prompt: str, timeout: float = 60) -> Any:
    from support.grpc_client import Request

    request = Request(inputs=prompt, height=8, width=8)
    metadata = [("mm-model-id", "stub")]
    return client.TextToImageTaskPredict.future(request, metadata=metadata, timeout=timeout)


class _in_process_grpc:
    """The gRPC server over `service` on a loop of its own, on a free loopback port."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(timeout=30)
        return f"127.0.0.1:{started}"

    async def _start(self) -> int:
        self.grpc = await start_grpc_server(self.service, "127.0.0.1", 0)
        self.service.start()
        return self.grpc.port

    async def _stop(self) -> None:
        await self.grpc.stop(grace=1)
        await self.service.stop()

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()
