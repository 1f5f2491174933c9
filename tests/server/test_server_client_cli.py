"""`tti generate` against a real server, an erroring one and a down one."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from PIL import Image
from support.server import ServerProcess, free_port


def tti(*args: str) -> subprocess.CompletedProcess[str]:
    script = Path(sys.executable).with_name("tti")
    command = (
        [str(script)] if script.exists() else [sys.executable, "-m", "tti_server.tools.client"]
    )
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


def image_info(path: Path) -> tuple[str | None, tuple[int, int]]:
    with Image.open(path) as image:
        return image.format, image.size


def assert_one_line_error(result: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert result.returncode != 0
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("tti: error: ")
    assert fragment in result.stderr
    assert "Traceback" not in result.stderr


def test_generate_writes_the_image(contract_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "cat.png"
    result = tti(
        "generate",
        "a cat",
        "--url",
        contract_server.url,
        "--height",
        "40",
        "--width",
        "24",
        "--steps",
        "1",
        "--seed",
        "5",
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert f"wrote {out}" in result.stdout
    assert image_info(out) == ("PNG", (24, 40))


def test_format_follows_the_file_suffix_or_the_flag(
    contract_server: ServerProcess, tmp_path: Path
) -> None:
    webp = tmp_path / "cat.webp"
    assert tti("generate", "c", "--url", contract_server.url, "-o", str(webp)).returncode == 0
    assert image_info(webp)[0] == "WEBP"
    forced = tmp_path / "cat.img"
    args = ("generate", "c", "--url", contract_server.url, "--format", "jpeg", "-o", str(forced))
    assert tti(*args).returncode == 0
    assert image_info(forced)[0] == "JPEG"


def test_an_error_answer_is_one_line(contract_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "never.png"
    result = tti("generate", "c", "--url", contract_server.url, "--height", "0", "-o", str(out))
    assert_one_line_error(result, "server answered 422: parameters.height:")
    assert not out.exists()


def test_a_down_server_is_one_line(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = tti("generate", "c", "--url", url, "-o", str(tmp_path / "x.png"))
    assert_one_line_error(result, f"cannot reach {url}")


def test_an_unwritable_output_is_one_line(contract_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "missing-dir" / "x.png"
    result = tti("generate", "c", "--url", contract_server.url, "-o", str(out))
    assert_one_line_error(result, f"cannot write {out}")


def test_generate_over_grpc(contract_server: ServerProcess, tmp_path: Path) -> None:
    out = tmp_path / "cat.webp"
    target = contract_server.grpc_target
    result = tti("generate", "a cat", "--grpc", target, "--model-id", "stub", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert image_info(out) == ("WEBP", (512, 512))
    args = ("--height", "60", "--width", "100", "--format", "jpeg", "-o", str(out))
    assert tti("generate", "c", "--grpc", target, "--model-id", "stub", *args).returncode == 0
    assert image_info(out) == ("JPEG", (100, 60))


def test_grpc_errors_are_one_line(contract_server: ServerProcess, tmp_path: Path) -> None:
    out = str(tmp_path / "x.png")
    target = contract_server.grpc_target
    assert_one_line_error(tti("generate", "c", "--grpc", target, "-o", out), "--model-id")
    other = tti("generate", "c", "--grpc", target, "--model-id", "sdxl", "-o", out)
    assert_one_line_error(other, "server answered NOT_FOUND: mm-model-id: model 'sdxl'")
    huge = tti("generate", "c", "--grpc", target, "--model-id", "stub", "--height", "99999")
    assert_one_line_error(huge, "server answered INVALID_ARGUMENT: parameters.height")
    seeded = tti("generate", "c", "--grpc", target, "--model-id", "stub", "--seed", "1")
    assert_one_line_error(seeded, "--seed")
    down = tti("generate", "c", "--grpc", f"127.0.0.1:{free_port()}", "--model-id", "stub")
    assert_one_line_error(down, "server answered UNAVAILABLE")
