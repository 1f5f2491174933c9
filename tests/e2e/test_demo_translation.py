"""The demo's pure parts: a pod template as a local command, and its command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from e2e import demo


def test_pod_template_to_local_command_maps_ports_and_volumes(tmp_path: Path) -> None:
    """The translation step 6 relies on, on a pod template like the operator's."""
    template: dict[str, Any] = {
        "spec": {
            "containers": [
                {
                    "name": "server",
                    "args": [
                        "--model",
                        "sdxl-turbo",
                        "--model-path",
                        "/models",
                        "--host",
                        "0.0.0.0",
                        "--port",
                        "8080",
                    ],
                    "env": [{"name": "HF_HOME", "value": "/cache/huggingface"}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                    "volumeMounts": [
                        {"name": "cache", "mountPath": "/cache"},
                        {"name": "weights", "mountPath": "/models"},
                    ],
                }
            ],
            "volumes": [
                {"name": "cache", "emptyDir": {}},
                {"name": "weights", "hostPath": {"path": str(tmp_path / "w")}},
            ],
        }
    }
    pod = demo.local_pod(template, tmp_path / "vol", port=4321)
    assert pod.argv[0].endswith("/tti-server")  # the image's ENTRYPOINT
    assert pod.argv[1:] == [
        "--model",
        "sdxl-turbo",
        "--model-path",
        str(tmp_path / "w"),
        "--host",
        "127.0.0.1",
        "--port",
        "4321",
        "--grpc-port",
        "0",
    ]
    assert pod.env == {"HF_HOME": str(tmp_path / "vol" / "cache" / "huggingface")}
    assert any("no GPU here" in note for note in pod.notes)
    template["spec"]["volumes"][1] = {
        "name": "weights",
        "persistentVolumeClaim": {"claimName": "w"},
    }
    with pytest.raises(demo.DemoError, match=r"weights.*persistentVolumeClaim"):
        demo.local_pod(template, tmp_path / "vol", port=4321)


def test_demo_help_describes_the_flags() -> None:
    result = subprocess.run(
        [sys.executable, demo.__file__, "--help"], capture_output=True, text=True, check=True
    )
    assert "--model {stub,sdxl-turbo}" in result.stdout and "--out" in result.stdout


@pytest.mark.parametrize("size", ["0", "4096"])
def test_demo_refuses_a_bad_size_naming_the_flag(size: str) -> None:
    result = subprocess.run(
        [sys.executable, demo.__file__, "--size", size], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert "--size must be between 8 and 2048" in result.stderr
    assert "Traceback" not in result.stderr
