"""schemathesis over the server's own OpenAPI document, against a real server process.

Requests the document allows must be accepted (no 400/415/422 for them), and no
request, allowed or not, may get a 5xx. Every status returned must be documented.
The server runs with small limits, so the fuzzer reaches them and images stay cheap.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance, status_code_conformance
from support.server import ServerProcess, running_server

FLAGS = ("--max-side", "64", "--default-size", "32", "--max-steps", "4")
FLAGS += ("--max-prompt-length", "50", "--model-id", "blue")
CHECKS = [not_a_server_error, positive_data_acceptance, status_code_conformance]


@pytest.fixture(scope="module")
def fuzzed_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    log_dir = tmp_path_factory.mktemp("fuzz")
    with running_server("--model", "stub", *FLAGS, log_dir=log_dir) as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_the_openapi_document_states_every_rule(
    fuzzed_server: ServerProcess, mode: GenerationMode
) -> None:
    # schemathesis' own pytest plugin does not run under this pytest, so each operation
    # gets a plain hypothesis test over schemathesis' strategy for it.
    schema = schemathesis.openapi.from_url(fuzzed_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 9  # every route
    for operation in operations:
        if mode == GenerationMode.NEGATIVE and operation.method != "post":
            continue  # no input to get wrong

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
        def call(case: Any) -> None:
            case.call_and_validate(checks=CHECKS)

        call()
