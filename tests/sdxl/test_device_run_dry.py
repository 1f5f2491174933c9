"""The device script's dry run: tests/benchmarks/device_run.py, which a session lent a GPU
runs first, works end to end on the CPU with the tiny model (real tti-server processes,
every setting this server offers, the table), so no device minute goes to fixing it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "device_run.py"

pytestmark = pytest.mark.slow


def test_the_dry_run_serves_each_setting_and_prints_one_table(tmp_path: Path) -> None:
    rows_path = tmp_path / "rows.json"
    command = [sys.executable, str(SCRIPT), "--dry-run", "--json", str(rows_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=280)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = {row["setting"]: row for row in json.loads(rows_path.read_text())}
    assert list(rows) == ["eager", "fast", "compiled"]
    for name in ("eager", "fast"):
        row = rows[name]
        assert row["note"] == "", row["note"]
        assert row["ready_s"] > 0
        assert set(row["p50_ms"]) == {"png", "jpeg"}
        assert set(row["images_per_s"]) == {"1", "4", "8"}
        assert set(row["mean_batch"]) == {"1", "4", "8"}
    assert rows["compiled"]["note"].startswith("skipped: ")  # compiling on a CPU: minutes
    table = result.stdout[result.stdout.index("dry run: CPU") :]
    assert "p50 png" in table and "img/s 8" in table and "batch@8" in table
    assert re.search(r"^fast +channels_last,fuse_qkv +8 ", table, re.MULTILINE), table
    assert re.search(r"^compiled +channels_last,fuse_qkv +1 ", table, re.MULTILINE), table
