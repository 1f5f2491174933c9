"""The gateway as a real process in front of real `tti-server` processes.

Each model is a stub server started with its own `--model-id`: a server answers 404 for
any other name, so a request that reaches the wrong model fails loudly.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import openai
import pytest
from support.clients import details_of, image_of, openai_client, sample
from support.gateway import StartGateway, gateway_command
from support.server import ServerProcess, StartServer, free_port

from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE as CAIKIT
from tti_server.backends.stub import STUB_COLOR

pytestmark = pytest.mark.slow

OPENAI = "/v1/images/generations"
SMALL = {"height": 64, "width": 64}


def caikit_body(model: str | None, **parameters: object) -> dict[str, object]:
    body: dict[str, object] = {"inputs": "a lighthouse", "parameters": {**SMALL, **parameters}}
    if model is not None:
        body["model_id"] = model
    return body


def stub(start_server: StartServer, model_id: str, *args: str) -> ServerProcess:
    return start_server("--model", "stub", "--model-id", model_id, "--grpc-port", "0", *args)


@pytest.fixture
def two_models(
    start_server: StartServer, start_gateway: StartGateway
) -> tuple[ServerProcess, ServerProcess, ServerProcess]:
    alpha, beta = stub(start_server, "alpha"), stub(start_server, "beta")
    gateway = start_gateway("--models", f"alpha={alpha.url};beta={beta.url};idle=")
    return gateway, alpha, beta


def test_routes_each_api_by_the_model_it_names(
    two_models: tuple[ServerProcess, ServerProcess, ServerProcess],
) -> None:
    gateway, alpha, beta = two_models
    for model in ("alpha", "beta", "alpha"):
        answer = httpx.post(gateway.url + CAIKIT, json=caikit_body(model))
        assert answer.status_code == 200, answer.text
        openai_answer = httpx.post(
            gateway.url + OPENAI, json={"model": model, "prompt": "x", "size": "64x64"}
        )
        assert openai_answer.status_code == 200, openai_answer.text
    assert sample(alpha.url, 'tti_requests_total{method="POST",route="/api') == 2
    assert sample(beta.url, 'tti_requests_total{method="POST",route="/v1') == 1


def test_the_openai_client_needs_one_base_url(
    two_models: tuple[ServerProcess, ServerProcess, ServerProcess],
) -> None:
    gateway, _, _ = two_models
    client = openai_client(gateway.url)
    for model in ("alpha", "beta"):
        result = client.images.generate(model=model, prompt="a fox", size="64x64")
        assert result.data is not None and result.data[0].b64_json is not None
        image = image_of(result.data[0].b64_json)
        assert image.size == (64, 64) and image.getpixel((0, 0)) == STUB_COLOR
    models = {m.id: m.model_dump() for m in client.models.list().data}
    assert models["alpha"]["state"] == "Ready" and models["alpha"]["ready_replicas"] == 1
    assert models["idle"]["state"] == "ScaledToZero" and models["idle"]["ready_replicas"] == 0
    with pytest.raises(openai.NotFoundError) as info:
        client.images.generate(model="gamma", prompt="x", size="64x64")
    assert details_of(info.value) == (
        "model: 'gamma' is not served here; known models: alpha, beta, idle"
    )


def test_raw_image_bytes_stream_through_with_the_request_id(
    two_models: tuple[ServerProcess, ServerProcess, ServerProcess],
) -> None:
    gateway, _, _ = two_models
    headers = {"Accept": "image/webp", "X-Request-Id": "trace-42"}
    answer = httpx.post(gateway.url + CAIKIT, json=caikit_body("beta"), headers=headers)
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "image/webp"
    assert answer.headers["x-request-id"] == "trace-42"
    assert image_of(answer.content).format == "WEBP"
    # The model's own error comes back untouched, with the id the client sent.
    refused = httpx.post(
        gateway.url + CAIKIT, json=caikit_body("beta", height=100000), headers=headers
    )
    assert refused.status_code == 400
    assert refused.json()["id"] == "trace-42" and "height" in refused.json()["details"]


@pytest.mark.parametrize(
    ("route", "body", "status", "details"),
    [
        (CAIKIT, {"inputs": "x"}, 422, "model_id: required to choose a model"),
        (OPENAI, {"prompt": "x"}, 400, "model: required to choose a model"),
        (CAIKIT, "{not json", 422, "body: invalid JSON"),
        (OPENAI, {"model": "gamma", "prompt": "x"}, 404, "known models: alpha, beta, idle"),
    ],
)
def test_requests_it_cannot_route_get_the_envelope(
    two_models: tuple[ServerProcess, ServerProcess, ServerProcess],
    route: str,
    body: object,
    status: int,
    details: str,
) -> None:
    gateway, _, _ = two_models
    content = body if isinstance(body, str) else None
    answer = httpx.post(
        gateway.url + route,
        content=content,
        json=None if content else body,
        headers={"Content-Type": "application/json"},
    )
    assert answer.status_code == status
    envelope = answer.json()
    assert envelope["code"] == status and details in envelope["details"]
    assert envelope["id"] == answer.headers["x-request-id"]


def test_least_busy_pod_gets_the_next_request(
    start_server: StartServer, start_gateway: StartGateway
) -> None:
    slow = ("--stub-latency-ms", "400", "--max-batch-size", "1")
    pods = [stub(start_server, "m", *slow) for _ in range(2)]
    gateway = start_gateway("--models", "m=" + ",".join(p.url for p in pods))

    def call() -> None:
        assert httpx.post(gateway.url + CAIKIT, json=caikit_body("m"), timeout=30).is_success

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counts = [sample(p.url, 'tti_requests_total{method="POST"') for p in pods]
    assert counts == [2, 2]


def test_a_vanished_pod_is_retried_once_on_another(
    start_server: StartServer, start_gateway: StartGateway
) -> None:
    pods = [stub(start_server, "m") for _ in range(2)]
    # A long probe interval: the table still thinks the killed pod is ready.
    gateway = start_gateway(
        "--models", "m=" + ",".join(p.url for p in pods), "--probe-interval", "60"
    )
    pods[0].process.kill()
    pods[0].process.wait()
    for _ in range(4):
        assert httpx.post(gateway.url + CAIKIT, json=caikit_body("m")).status_code == 200
    assert sample(gateway.metrics_url, 'tti_gateway_retries_total{model="m",namespace=""}') == 1
    assert sample(pods[1].url, 'tti_requests_total{method="POST"') == 4


class StallingPod(BaseHTTPRequestHandler):
    """Ready, but stalls on every POST: before its answer's head, or half-way through the body
    (a pod whose GPU hung, say). A tti-server cannot be made to do that on cue."""

    protocol_version = "HTTP/1.1"
    stall_in = "head"

    def do_GET(self) -> None:  # /readyz, probed by the gateway
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.stall_in == "body":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(b"x" * 10)
            self.wfile.flush()
        time.sleep(3)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def stalling_pod(request: pytest.FixtureRequest) -> Iterator[str]:
    handler = type("Stalling", (StallingPod,), {"stall_in": request.param})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("stalling_pod", ["head", "body"], indirect=True)
def test_a_pod_that_stalls_past_the_upstream_timeout(
    stalling_pod: str, start_gateway: StartGateway, request: pytest.FixtureRequest
) -> None:
    gateway = start_gateway("--models", f"hung={stalling_pod}", "--upstream-timeout", "1")
    body = caikit_body("hung")
    if request.node.callspec.params["stalling_pod"] == "head":
        answer = httpx.post(gateway.url + CAIKIT, json=body, timeout=10)
        assert answer.status_code == 504 and answer.headers["retry-after"] == "5"
        assert "'hung' did not answer in time" in answer.json()["details"]
    else:
        # The status went out with the head: the body is cut short, and the client sees it.
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.post(gateway.url + CAIKIT, json=body, timeout=10)
        assert "the pod's answer broke off" in gateway.output()
    assert httpx.get(gateway.url + "/healthz").status_code == 200
    assert "Traceback" not in gateway.output()


def test_requests_at_zero_are_held_until_the_model_starts(
    start_server: StartServer, start_gateway: StartGateway
) -> None:
    port = free_port()
    gateway = start_gateway("--models", f"late=http://127.0.0.1:{port}", "--probe-interval", "0.1")
    answers: list[httpx.Response] = []

    def call() -> None:
        answers.append(httpx.post(gateway.url + CAIKIT, json=caikit_body("late"), timeout=60))

    burst = [threading.Thread(target=call) for _ in range(3)]
    for thread in burst:
        thread.start()
    models = httpx.get(gateway.url + "/v1/models").json()["data"]
    assert models[0]["state"] == "Starting"
    stub(start_server, "late", "--port", str(port))
    for thread in burst:
        thread.join()
    assert [a.status_code for a in answers] == [200, 200, 200]
    cold_starts = 'tti_gateway_cold_starts_total{model="late",namespace=""}'
    assert sample(gateway.metrics_url, cold_starts) == 1


def test_a_model_that_does_not_start_in_time_gets_503_with_retry_after(
    start_gateway: StartGateway,
) -> None:
    gateway = start_gateway(
        "--models", "idle=", "--hold-timeout", "0.5", "--retry-after", "7", "--max-held", "1"
    )
    answer = httpx.post(gateway.url + OPENAI, json={"model": "idle", "prompt": "x"})
    assert answer.status_code == 503 and answer.headers["retry-after"] == "7"
    assert "no pod became ready within 0.5 s" in answer.json()["details"]


def test_bodies_over_the_limit_get_413(start_gateway: StartGateway) -> None:
    gateway = start_gateway("--models", "idle=", "--max-body-bytes", "2048")
    big = {"model": "idle", "prompt": "x" * 4096}
    answer = httpx.post(gateway.url + OPENAI, json=big)
    assert answer.status_code == 413
    assert answer.json()["details"] == "body: larger than the gateway's limit of 2048 bytes"

    def chunks() -> object:  # no Content-Length: counted as it arrives
        yield b'{"model": "idle", "prompt": "'
        yield b"x" * 4096
        yield b'"}'

    streamed = httpx.post(
        gateway.url + OPENAI, content=chunks(), headers={"Content-Type": "application/json"}
    )
    assert streamed.status_code == 413


def test_a_client_that_writes_a_large_body_first_still_reads_the_413(
    start_gateway: StartGateway,
) -> None:
    """The standard library's client sends the whole body before it reads: the gateway reads
    the rest of it (up to 8 times its limit) so the answer is a 413, not a reset."""
    limit = 1 << 20  # 8 MiB sent: more than loopback's socket buffers take unread
    gateway = start_gateway("--models", "idle=", "--max-body-bytes", str(limit))
    body = json.dumps({"model": "idle", "prompt": "x" * 8 * limit}).encode()[: 8 * limit]
    request = urllib.request.Request(gateway.url + OPENAI, body, {"Content-Type": "text/plain"})
    with pytest.raises(urllib.error.HTTPError) as answer:
        urllib.request.urlopen(request, timeout=30)
    answer.value.close()
    assert answer.value.code == 413


def test_bearer_tokens_from_a_file(
    tmp_path: Path, start_server: StartServer, start_gateway: StartGateway
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# one per line\nfirst-token\nsecond-token\n")
    pod = stub(start_server, "m")
    gateway = start_gateway("--models", f"m={pod.url}", "--auth-tokens-file", str(tokens))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic second-token"}):
        answer = httpx.post(gateway.url + CAIKIT, json=caikit_body("m"), headers=headers)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"
        assert answer.json()["details"].startswith("authorization: a valid bearer token")
    assert httpx.get(gateway.url + "/v1/models").status_code == 401
    for path in ("/healthz", "/readyz"):
        assert httpx.get(gateway.url + path).status_code == 200
    assert httpx.get(gateway.metrics_url + "/metrics").status_code == 200
    client = openai_client(gateway.url, api_key="second-token")
    assert client.images.generate(model="m", prompt="x", size="64x64").data
    assert [m.id for m in client.models.list().data] == ["m"]
    with pytest.raises(openai.AuthenticationError):
        openai_client(gateway.url, api_key="nope").models.list()


def test_health_metrics_and_unknown_routes(start_gateway: StartGateway) -> None:
    gateway = start_gateway("--models", "idle=")
    assert httpx.get(gateway.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(gateway.url + "/readyz").json() == {"status": "ready"}
    text = httpx.get(gateway.metrics_url + "/metrics").text
    assert 'tti_gateway_model_state{model="idle",namespace="",state="ScaledToZero"} 1.0' in text
    missing = httpx.get(gateway.url + "/nope")
    assert missing.status_code == 404 and missing.json()["details"] == "path: no route for /nope"
    assert httpx.get(gateway.url + OPENAI).status_code == 405


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "no-equals-sign"], "--models: Value error, expected MODEL=URL"),
        (["--hold-timeout", "0"], "--hold-timeout: Input should be greater than 0"),
    ],
)
def test_bad_settings_exit_2_naming_the_flag(args: list[str], message: str) -> None:
    done = subprocess.run([*gateway_command(), *args], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and message in done.stderr


def test_the_cluster_source_without_credentials_exits_1_saying_so(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
    }
    done = subprocess.run(
        [*gateway_command(), "--source", "cluster"],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == (
        "tti-gateway: error: --source cluster: no credentials: neither a service account "
        "(in a pod) nor a kubeconfig (KUBECONFIG or ~/.kube/config)"
    )
