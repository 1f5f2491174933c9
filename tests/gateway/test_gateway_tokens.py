"""Static bearer tokens on a real gateway process in front of real stub servers: each token's
scope (models here: the static source has no namespaces; namespaces are in
test_gateway_identity.py, on the cluster source), the model list each caller sees, and a
rotated Secret taking effect without a restart.
"""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from support.gateway import StartGateway, call_as, gateway_command, write_secret_volume
from support.server import ServerProcess, StartServer

pytestmark = pytest.mark.slow

T = TypeVar("T")


def stub(start_server: StartServer, model_id: str) -> ServerProcess:
    return start_server("--model", "stub", "--model-id", model_id, "--grpc-port", "0")


def listed(gateway: ServerProcess, token: str) -> list[str]:
    answer = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return [m["id"] for m in answer.json()["data"]]


def eventually(probe: Callable[[], T], done: Callable[[T], bool], what: str) -> T:
    """Poll until `done(probe())`; the gateway looks at the file every 0.1 s here."""
    for _ in range(600):
        value = probe()
        if done(value):
            return value
        threading.Event().wait(0.05)
    raise AssertionError(f"{what}: still {value!r}")


@pytest.fixture
def two_models(start_server: StartServer) -> str:
    alpha, beta = stub(start_server, "alpha"), stub(start_server, "beta")
    return f"alpha={alpha.url};beta={beta.url}"


def test_each_token_calls_and_lists_only_its_models(
    tmp_path: Path, two_models: str, start_gateway: StartGateway
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(
        "everything-token\n"
        "alpha-token models=alpha name=alpha-only\n"
        "namespaced-token namespaces=team-a\n"  # the static source has no namespaces
    )
    gateway = start_gateway("--models", two_models, "--auth-tokens-file", str(tokens))
    assert [call_as(gateway, m, "everything-token").status_code for m in ("alpha", "beta")] == [
        200,
        200,
    ]
    assert call_as(gateway, "alpha", "alpha-token").status_code == 200
    refused = call_as(gateway, "beta", "alpha-token")
    assert refused.status_code == 403, refused.text
    assert refused.json()["details"].startswith("model: this caller may not use 'beta'")
    assert "www-authenticate" not in refused.headers
    assert call_as(gateway, "beta", "namespaced-token").status_code == 403
    unknown = call_as(gateway, "gamma", "alpha-token")
    assert unknown.status_code == 404 and "beta" not in unknown.json()["details"]
    assert listed(gateway, "everything-token") == ["alpha", "beta"]
    assert listed(gateway, "alpha-token") == ["alpha"]
    assert listed(gateway, "namespaced-token") == []


def test_a_refused_token_is_told_nothing_more_than_a_missing_one(
    tmp_path: Path, two_models: str, start_gateway: StartGateway
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("good-token\n")
    gateway = start_gateway("--models", two_models, "--auth-tokens-file", str(tokens))
    answers = [call_as(gateway, "alpha", token) for token in (None, "wrong", "eyJ0.eyJ0.c2ln")]
    assert {a.status_code for a in answers} == {401}
    assert len({a.json()["details"] for a in answers}) == 1
    assert {a.headers["www-authenticate"] for a in answers} == {"Bearer"}


def test_a_rotated_secret_takes_effect_without_a_restart(
    tmp_path: Path, two_models: str, start_gateway: StartGateway
) -> None:
    volume = tmp_path / "secret"
    write_secret_volume(volume, {"tokens": "old-token\n"}, 1)
    gateway = start_gateway(
        "--models", two_models,
        "--auth-tokens-file", str(volume / "tokens"),
        "--auth-tokens-poll", "0.1",
    )  # fmt: skip
    pid = gateway.process.pid
    assert call_as(gateway, "alpha", "old-token").status_code == 200
    # What the kubelet does when the Secret is updated: a new directory, swapped in.
    write_secret_volume(volume, {"tokens": "new-token models=beta\n"}, 2)
    eventually(lambda: call_as(gateway, "beta", "new-token").status_code, (200).__eq__, "new")
    assert call_as(gateway, "alpha", "old-token").status_code == 401  # revoked
    assert call_as(gateway, "alpha", "new-token").status_code == 403  # scoped to beta
    # A broken rotation accepts no static token rather than keep the old ones.
    write_secret_volume(volume, {"tokens": "new-token namespace=typo\n"}, 3)
    eventually(lambda: call_as(gateway, "beta", "new-token").status_code, (401).__eq__, "broken")
    assert "unknown key 'namespace'" in gateway.output()
    write_secret_volume(volume, {"tokens": "fixed-token\n"}, 4)
    eventually(lambda: call_as(gateway, "alpha", "fixed-token").status_code, (200).__eq__, "fixed")
    assert gateway.process.pid == pid and gateway.process.poll() is None  # the same process
    assert "new-token" not in gateway.output() and "old-token" not in gateway.output()


def test_a_bad_tokens_file_stops_the_gateway_at_start_naming_the_line(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("a-secret models=Not_A_Name\n")
    result = subprocess.run(
        [*gateway_command(), "--models", "m=", "--auth-tokens-file", str(tokens)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert f"{tokens}: line 1: models: 'Not_A_Name' is not a Kubernetes name" in result.stderr
    assert "a-secret" not in result.stderr


def test_identity_needs_the_cluster_source() -> None:
    result = subprocess.run(
        [*gateway_command(), "--models", "m=", "--identity", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--identity: Value error, needs --source cluster" in result.stderr
