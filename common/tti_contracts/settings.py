"""How the programs read a list setting from one environment variable."""

from __future__ import annotations


def comma_list(value: object) -> object:
    """`a, b,,c` as ["a", "b", "c"]: a list setting from one environment variable."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value
