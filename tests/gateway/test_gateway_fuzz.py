"""schemathesis over the gateway: the server's own OpenAPI document, every request sent to a
real gateway process (auth on, a token scoped to the one model) in front of a real stub
server. Whatever the gateway forwards, refuses or answers itself, nothing may be a 5xx.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from support.gateway import launch_gateway
from support.server import ServerProcess, running_server

FLAGS = ("--max-side", "64", "--default-size", "32", "--max-steps", "4")
FLAGS += ("--max-prompt-length", "50", "--model-id", "blue")
TOKEN = "fuzz-token"


@pytest.fixture(scope="module")
def pod_and_gateway(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    log_dir = tmp_path_factory.mktemp("gateway-fuzz")
    tokens = Path(log_dir) / "tokens"
    # Scoped: every request takes the way of a caller who may call some models, not all.
    tokens.write_text(f"{TOKEN} models=blue\n")
    with running_server("--model", "stub", *FLAGS, log_dir=log_dir) as pod:
        args = ("--models", f"blue={pod.url};asleep=", "--auth-tokens-file", str(tokens))
        gateway = launch_gateway(args, log_dir)
        try:
            yield pod, gateway
        finally:
            gateway.stop()


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_request_gets_a_5xx_from_the_gateway(
    pod_and_gateway: tuple[ServerProcess, ServerProcess], mode: GenerationMode
) -> None:
    pod, gateway = pod_and_gateway
    schema = schemathesis.openapi.from_url(pod.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations
    for operation in operations:
        if mode == GenerationMode.NEGATIVE and operation.method != "post":
            continue

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            case.call_and_validate(
                base_url=gateway.url,
                headers={"Authorization": f"Bearer {TOKEN}"},
                checks=[not_a_server_error],
            )

        call()
    if mode == GenerationMode.POSITIVE:  # the fuzzer's requests did reach the model
        assert forwarded(pod) > 0


def forwarded(pod: ServerProcess) -> float:
    total = 0.0
    for line in httpx.get(pod.url + "/metrics").text.splitlines():
        if line.startswith('tti_requests_total{method="POST"'):
            total += float(line.rsplit(" ", 1)[1])
    return total
