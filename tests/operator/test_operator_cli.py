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


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("TTI_OPERATOR_LIVENESS_PORT", "70000", "liveness_port"),
        ("TTI_OPERATOR_OWN_POD_LABELS", "app=op,component", "own_pod_labels"),
        ("TTI_OPERATOR_GATEWAY_POD_LABELS", "", "gateway_pod_labels"),
        ("TTI_OPERATOR_METRICS_SCRAPERS", '[{"ipBlock": {}}]', "metrics_scrapers"),
    ],
)
def test_a_bad_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    variable: str,
    value: str,
    field: str,
) -> None:
    monkeypatch.setenv(variable, value)
    assert main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tti-operator: invalid setting {field}"), err
    assert "\n" not in err


def test_the_network_policy_settings_read_labels_and_peers_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TTI_OPERATOR_OWN_POD_LABELS", "a=1, b=2")
    monkeypatch.setenv("TTI_OPERATOR_METRICS_SCRAPERS", '[{"namespaceSelector": {}}]')
    monkeypatch.setenv("TTI_OPERATOR_OWN_NAMESPACE", "ops")
    settings = load_settings(parse_args([]))
    assert settings.own_pod_labels == {"a": "1", "b": "2"}
    assert [p.as_peer() for p in settings.metrics_scrapers] == [{"namespaceSelector": {}}]
    assert settings.gateway_namespace_or_own == "ops"  # unset: beside the operator


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
