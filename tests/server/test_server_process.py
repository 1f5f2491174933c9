"""`tti-server` as an operator runs it: flags, environment, saturation and exit status."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from support.server import ServerExited, StartServer, server_command

from tti_contracts.catalogue import CATALOGUE
from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE as CAIKIT


def generate(url: str, prompt: str = "x") -> httpx.Response:
    body = {"inputs": prompt, "parameters": {"height": 8, "width": 8}}
    return httpx.post(url + CAIKIT, json=body, timeout=30)


def test_help_lists_every_setting_and_the_subcommand() -> None:
    result = subprocess.run([*server_command(), "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    for flag in (
        "--model {" + ",".join(CATALOGUE) + "}",
        "--model-path",
        "--image-format {png,jpeg,webp}",
        "--port",
        "--max-queue",
        "--request-timeout",
        "--workers",
        "--max-batch-size",
        "--batch-wait-ms",
        "--device {auto,cpu,cuda}",
        "--max-side",
        "--max-prompt-length",
        "--playground",
        "TTI_MAX_QUEUE",
        "make-tiny-model DIR",
    ):
        assert flag in result.stdout


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--port", "abc"], "--port: invalid int value: 'abc'"),
        (["--model", "dalle"], "--model: invalid choice: 'dalle'"),
        (["--max-batch-size", "0"], "--max-batch-size (TTI_MAX_BATCH_SIZE): Input should be"),
        (["--request-timeout", "-1"], "--request-timeout (TTI_REQUEST_TIMEOUT): Input should be"),
        (["--png-compress-level", "10"], "--png-compress-level (TTI_PNG_COMPRESS_LEVEL): Input"),
    ],
)
def test_bad_flags_exit_2_with_one_line(args: list[str], fragment: str) -> None:
    result = subprocess.run([*server_command(), *args], capture_output=True, text=True)
    assert result.returncode == 2
    assert fragment in result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr


def test_a_bad_environment_variable_names_itself() -> None:
    command = [*server_command(), "--port", "1"]
    env = {**os.environ, "TTI_MAX_QUEUE": "many"}
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "--max-queue (TTI_MAX_QUEUE): Input should be a valid integer" in result.stderr


def test_environment_variables_configure_the_server(start_server: StartServer) -> None:
    server = start_server(env={"TTI_MAX_SIDE": "64", "TTI_MODEL_ID": "blue"})
    body = {"inputs": "x", "parameters": {"height": 128}}
    answer = httpx.post(server.url + CAIKIT, json=body)
    assert answer.status_code == 400
    assert "maximum of 64 pixels" in answer.json()["details"]
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == "blue"


def test_flags_win_over_environment_variables(start_server: StartServer) -> None:
    server = start_server("--model-id", "from-flag", env={"TTI_MODEL_ID": "from-env"})
    assert httpx.get(server.url + "/v1/models").json()["data"][0]["id"] == "from-flag"


def test_a_full_queue_answers_503_at_once_and_the_server_recovers(
    start_server: StartServer,
) -> None:
    # One worker busy for 1 s and room for one waiting request: of 6 requests sent
    # together, at most 2 can be accepted before the first finishes.
    server = start_server("--stub-latency-ms", "2000", "--max-queue", "1", "--max-batch-size", "1")
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda i: generate(server.url, f"p{i}"), range(6)))
    refused = [a for a in answers if a.status_code == 503]
    assert len(refused) >= 4
    assert all(a.headers["retry-after"] == "1" for a in refused)
    assert all("already waiting" in a.json()["details"] for a in refused)
    assert {a.status_code for a in answers} == {200, 503}
    assert generate(server.url).status_code == 200
    metrics = httpx.get(server.url + "/metrics").text
    assert 'route="/api/v1/task/text-to-image",status="503"' in metrics


def test_a_request_past_the_timeout_gets_504(start_server: StartServer) -> None:
    server = start_server("--stub-latency-ms", "3000", "--request-timeout", "0.5")
    answer = generate(server.url)
    assert answer.status_code == 504
    assert answer.json()["details"] == "the request did not finish within 0.5 s"
    assert httpx.get(server.url + "/health").text == "OK"


def test_workers_flag_starts_that_many_cpu_workers(start_server: StartServer) -> None:
    server = start_server("--workers", "2", "--max-batch-size", "1")
    info = httpx.get(server.url + "/info/models").json()["models"][0]
    assert (info["metadata"]["workers"], info["metadata"]["devices"]) == (2, ["cpu", "cpu"])
    with ThreadPoolExecutor(4) as pool:
        assert {a.status_code for a in pool.map(generate, [server.url] * 4)} == {200}


def test_a_model_that_cannot_load_exits_non_zero_with_one_clear_line(
    start_server: StartServer, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-model"
    server = start_server(
        "--model",
        "sdxl-turbo",
        "--model-path",
        str(missing),
        "--device",
        "cuda",
        wait_ready=False,
    )
    with pytest.raises(ServerExited):
        from support.server import wait_until_ready

        wait_until_ready(server, timeout=120)
    assert server.process.returncode == 1
    output = server.output()
    last = output.strip().splitlines()[-1]
    assert last.startswith(f"tti-server: error: model: cannot load sdxl-turbo from {missing}: ")
    assert "Traceback" not in output


def test_an_unknown_speed_up_is_a_load_failure(start_server: StartServer) -> None:
    server = start_server(
        "--model",
        "sdxl-turbo",
        "--device",
        "cpu",
        "--sdxl-speedups",
        "warp-drive",
        wait_ready=False,
    )
    assert server.wait_exit(timeout=120) == 1
    last = server.output().strip().splitlines()[-1]
    assert last.startswith("tti-server: error: model: cannot load sdxl-turbo")
    assert "--sdxl-speedups: unknown speed-up warp_drive" in last


def test_make_tiny_model_has_its_own_help() -> None:
    command = [*server_command(), "make-tiny-model", "--help"]
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0
    assert "usage: tti-server make-tiny-model [-h]" in result.stdout
    assert "--family {sdxl,sd3,flux-schnell,flux-dev}" in result.stdout


def test_python_dash_m_runs_the_same_server() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tti_server", "--version"], capture_output=True, text=True
    )
    assert result.returncode == 0
    assert result.stdout.startswith("tti-server ")
