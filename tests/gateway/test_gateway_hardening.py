"""The gateway against hostile clients (issue 25): a real gateway process, real sockets.

Heads past the limit are refused before authentication and before more of them is read;
slow clients lose their connection once the configured timeout has passed; two
`Authorization` headers are refused; the headers of one hop stay on it, both ways; the pod
learns the client's address and nothing a client claims about hops before it; no answer is
a redirect built from the `Host` header; `/metrics` is not on the clients' port.
"""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

import httpx
import pytest
from support.gateway import StartGateway, launch_gateway
from support.hostile import (
    SLOW_CLIENTS,
    assert_huge_header_refused,
    assert_slow_client_cut_off,
    many_headers_request,
    send_raw,
    timeout_flags,
)
from support.server import ServerProcess, StartServer

from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE as CAIKIT

pytestmark = pytest.mark.slow

OPENAI = "/v1/images/generations"
TOKEN = "the-token"
TIMEOUT = 1.0  # each of the gateway's client timeouts, in these tests


@pytest.fixture
def tokens(tmp_path: Path) -> Path:
    path = tmp_path / "tokens"
    path.write_text(TOKEN + "\n")
    return path


# -- the head: size and count ----------------------------------------------------------------


def test_a_huge_header_gets_431_before_auth_and_is_not_read_on(
    start_gateway: StartGateway, tokens: Path
) -> None:
    gateway = start_gateway(
        "--models", "idle=", "--auth-tokens-file", str(tokens), "--max-header-bytes", "8192"
    )
    refusal = assert_huge_header_refused(gateway, CAIKIT)
    assert refusal["details"] == "headers: larger than 8192 bytes"
    assert httpx.get(gateway.url + "/healthz").status_code == 200


def test_too_many_headers_get_431_before_auth(start_gateway: StartGateway, tokens: Path) -> None:
    gateway = start_gateway("--models", "idle=", "--auth-tokens-file", str(tokens))
    for count, details in [(2000, "larger than 32768 bytes"), (200, "more than 100")]:
        answer = send_raw(gateway.url, many_headers_request(CAIKIT, count))
        assert answer.status == 431 and answer.closed
        assert b'"details": "headers: %s"' % details.encode() in answer.data
    under_the_limit = send_raw(gateway.url, many_headers_request(CAIKIT, 90))
    assert under_the_limit.status == 401  # on to auth


# -- slow clients ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def impatient_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ("--models", "idle=", *timeout_flags(TIMEOUT))
    gateway = launch_gateway(args, tmp_path_factory.mktemp("gateway"))
    yield gateway
    gateway.stop()


@pytest.mark.parametrize("case", list(SLOW_CLIENTS))
def test_a_slow_client_loses_its_connection(impatient_gateway: ServerProcess, case: str) -> None:
    assert_slow_client_cut_off(impatient_gateway.url, case, TIMEOUT)
    assert httpx.get(impatient_gateway.url + "/healthz").status_code == 200


# -- Authorization ---------------------------------------------------------------------------


def test_two_authorization_headers_get_400(
    start_server: StartServer, start_gateway: StartGateway, tokens: Path
) -> None:
    pod = start_server("--model", "stub", "--model-id", "m", "--grpc-port", "0")
    gateway = start_gateway("--models", f"m={pod.url}", "--auth-tokens-file", str(tokens))
    body = {"model": "m", "prompt": "x", "size": "64x64"}
    good, bad = ("Authorization", f"Bearer {TOKEN}"), ("Authorization", "Bearer wrong")
    for pair in ([good, bad], [bad, good], [good, good]):
        answer = httpx.post(gateway.url + OPENAI, json=body, headers=pair)
        assert answer.status_code == 400, answer.text
        assert answer.json()["details"] == "authorization: 2 Authorization headers; send one"
    assert httpx.post(gateway.url + OPENAI, json=body, headers=[good]).status_code == 200


# -- what crosses the gateway ----------------------------------------------------------------


class EchoPod(BaseHTTPRequestHandler):
    """Answers a POST with the path and headers it got, adding headers of its own hop."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[dict[str, Any]]]

    def do_GET(self) -> None:  # /readyz, probed by the gateway
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        got = {"path": self.path, "headers": [[k.lower(), v] for k, v in self.headers.items()]}
        self.seen.append(got)
        body = json.dumps(got).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in RESPONSE_HOPS:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


RESPONSE_HOPS = [
    ("Connection", "X-Pod-Hop"),
    ("X-Pod-Hop", "pod secret"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Connection", "keep-alive"),
    ("Proxy-Authenticate", "Basic"),
    ("Upgrade", "h2c"),
]
REQUEST_HOPS = [
    ("Connection", "X-Custom, keep-alive"),
    ("X-Custom", "client secret"),
    ("Keep-Alive", "300"),
    ("Proxy-Connection", "keep-alive"),
    ("Proxy-Authorization", "Basic abc"),
    ("TE", "trailers"),
    ("Upgrade", "h2c"),
]
FORWARDING = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Forwarded-Proto", "https"),
    ("X-Forwarded-Host", "evil.example"),
    ("Forwarded", "for=6.6.6.6;host=evil.example"),
]


@dataclass
class Echo:
    url: str
    seen: list[dict[str, Any]] = field(default_factory=list)  # what each POST brought


@pytest.fixture
def echo_pod() -> Iterator[Echo]:
    echo = Echo("")
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Echo", (EchoPod,), {"seen": echo.seen}))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    echo.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield echo
    server.shutdown()
    server.server_close()


def post_through(
    gateway: ServerProcess, path: str, headers: list[tuple[str, str]]
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """POST with exactly these headers (http.client adds only Host, unless given, and
    Content-Length); the status and headers the client got, and what the pod got."""
    parts = urlsplit(gateway.url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    body = json.dumps({"model": "echo", "prompt": "x"}).encode()
    own_host = any(name.lower() == "host" for name, _ in headers)
    connection.putrequest("POST", path, skip_host=own_host, skip_accept_encoding=True)
    for name, value in [("Content-Type", "application/json"), *headers]:
        connection.putheader(name, value)
    connection.putheader("Content-Length", str(len(body)))
    connection.endheaders(body)
    response = connection.getresponse()
    answer = json.loads(response.read())
    connection.close()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, answer


def test_hop_by_hop_headers_stay_on_their_hop_both_ways(
    start_gateway: StartGateway, echo_pod: Echo
) -> None:
    gateway = start_gateway("--models", f"echo={echo_pod.url}")
    status, headers, seen = post_through(gateway, OPENAI, [*REQUEST_HOPS, ("X-Kept", "yes")])
    assert status == 200
    got = dict(seen["headers"])
    assert got["x-kept"] == "yes"  # an end-to-end header passes
    assert set(got).isdisjoint({name.lower() for name, _ in REQUEST_HOPS})
    pods_hop = {name.lower() for name, _ in RESPONSE_HOPS if name != "Connection"}
    assert set(headers).isdisjoint(pods_hop)
    assert headers.get("connection") in (None, "keep-alive")  # the gateway's own, if any


def test_the_pod_gets_the_clients_address_and_not_its_claims(
    start_gateway: StartGateway, echo_pod: Echo
) -> None:
    gateway = start_gateway("--models", f"echo={echo_pod.url}")
    _, _, seen = post_through(gateway, OPENAI, FORWARDING)
    claims = [(n, v) for n, v in seen["headers"] if n.startswith(("x-forwarded", "forwarded"))]
    assert claims == [("x-forwarded-for", "127.0.0.1")]


def test_a_trusted_proxys_forwarding_headers_pass_with_its_address_appended(
    start_gateway: StartGateway, echo_pod: Echo
) -> None:
    trusted = ("--trusted-proxies", "10.0.0.0/8,127.0.0.1")
    gateway = start_gateway("--models", f"echo={echo_pod.url}", *trusted)
    _, _, seen = post_through(gateway, OPENAI, FORWARDING)
    got = dict(seen["headers"])
    assert got["x-forwarded-for"] == "6.6.6.6, 127.0.0.1"
    assert got["x-forwarded-proto"] == "https" and got["forwarded"] == FORWARDING[3][1]


# -- redirects and ports ---------------------------------------------------------------------


def test_no_answer_redirects_to_the_host_header(
    start_gateway: StartGateway, tokens: Path, echo_pod: Echo
) -> None:
    url = echo_pod.url
    locked = start_gateway("--models", f"echo={url}", "--auth-tokens-file", str(tokens))
    evil = {"Host": "evil.example"}
    for method, path in [("POST", CAIKIT + "/"), ("POST", OPENAI + "/"), ("GET", "/v1/models/")]:
        answer = httpx.request(method, locked.url + path, headers=evil, json={})
        assert answer.status_code in (401, 404), (path, answer.status_code)
        assert "location" not in answer.headers
    # With a trailing slash a forwarded route is served, and the pod gets the path without it.
    gateway = start_gateway("--models", f"echo={url}")
    status, headers, seen = post_through(gateway, OPENAI + "/?x=1", [("Host", "evil.example")])
    assert status == 200 and "location" not in headers
    assert seen["path"] == OPENAI + "?x=1"


def test_metrics_are_on_their_own_port_only(start_gateway: StartGateway) -> None:
    gateway = start_gateway("--models", "idle=")
    assert httpx.get(gateway.url + "/metrics").status_code == 404
    metrics = httpx.get(gateway.metrics_url + "/metrics")
    assert metrics.status_code == 200 and "tti_gateway_model_state" in metrics.text
    # The metrics port serves nothing else: no forwarding, no model list.
    assert httpx.post(gateway.metrics_url + OPENAI, json={"model": "idle"}).status_code == 404
    assert httpx.get(gateway.metrics_url + "/v1/models").status_code == 404
