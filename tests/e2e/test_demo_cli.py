"""The demo's command line: its help and its refusal of bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from localcluster import demo
from tti_contracts.catalogue import CATALOGUE

ROOT = Path(demo.__file__).parents[1]
DEMO = [sys.executable, "-m", "localcluster.demo"]


def test_demo_help_describes_the_flags() -> None:
    result = subprocess.run([*DEMO, "--help"], capture_output=True, text=True, check=True, cwd=ROOT)
    assert "--model {" + ",".join(CATALOGUE) + "}" in result.stdout and "--out" in result.stdout


@pytest.mark.parametrize("size", ["0", "4096"])
def test_demo_refuses_a_bad_size_naming_the_flag(size: str) -> None:
    result = subprocess.run([*DEMO, "--size", size], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2
    assert "--size must be between 8 and 2048" in result.stderr
    assert "Traceback" not in result.stderr
