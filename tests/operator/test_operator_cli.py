"""The `tti-operator` command line: help, settings from flags and environment, bad values."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tti_operator.cli import load_settings, main, parse_args


def test_help_describes_the_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tti_operator.cli", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "TextToImageModel" in result.stdout
    assert "--namespace" in result.stdout


def test_flags_override_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTI_OPERATOR_SERVER_IMAGE", "from-env:1")
    monkeypatch.setenv("TTI_OPERATOR_NAMESPACES", "a, b")
    settings = load_settings(parse_args([]))
    assert settings.server_image == "from-env:1"
    assert settings.namespaces == ["a", "b"]
    settings = load_settings(parse_args(["--server-image", "flag:2", "-n", "c"]))
    assert (settings.server_image, settings.namespaces) == ("flag:2", ["c"])


def test_a_bad_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("TTI_OPERATOR_LIVENESS_PORT", "70000")
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("tti-operator: invalid setting liveness_port")
    assert "\n" not in err


@pytest.mark.parametrize("verbose", [False, True])
def test_kopfs_per_event_success_lines_only_show_when_verbose(verbose: bool) -> None:
    """One line per event of every model (mostly echoes of its own status patches) is noise;
    kopf's warnings about a model are not."""
    script = "\n".join(
        [
            "import logging",
            "from tti_operator.cli import configure_logging",
            "from tti_operator.settings import OperatorSettings",
            f"settings = {{'verbose': {verbose}, 'log_format': 'plain'}}",
            "configure_logging(OperatorSettings.model_validate(settings))",
            "objects = logging.getLogger('kopf.objects')",
            "objects.info(\"Handler 'model_event' succeeded.\")",
            "objects.warning(\"Handler 'model_event' failed\")",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    logged = result.stdout + result.stderr
    assert "'model_event' failed" in logged
    assert ("'model_event' succeeded" in logged) == verbose
