"""docs/gateway.md's settings table is the settings object's: every field, its default."""

from __future__ import annotations

from pathlib import Path

from pydantic_core import PydanticUndefined

from tti_gateway.settings import GatewaySettings

DOC = Path(__file__).resolve().parents[2] / "docs" / "gateway.md"


def documented_settings() -> dict[str, str]:
    """Flag -> default cell, from the table under `## Settings`."""
    section = DOC.read_text().split("## Settings", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`--"):
            rows[cells[0].strip("`")] = cells[1].strip("`")
    return rows


def default_cell(name: str) -> str:
    default = GatewaySettings.model_fields[name].default
    empty = default in (None, PydanticUndefined) or default == {}
    return "—" if empty else str(default)


def test_every_setting_is_documented_with_its_default() -> None:
    documented = documented_settings()
    flags = {"--" + name.replace("_", "-"): name for name in GatewaySettings.model_fields}
    assert set(documented) == set(flags)
    for flag, name in flags.items():
        assert documented[flag] == default_cell(name), flag
