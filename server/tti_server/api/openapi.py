"""The OpenAPI document, stating every rule the server enforces.

The request models carry the fixed rules; the limits that come from the settings
(largest side, most steps, longest prompt, the served model's name) are written
into the document here, so that a request the document allows is one the server
accepts (tests/server/test_server_fuzz.py checks that with schemathesis).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from tti_server.settings import Settings

SEED_MAX = 2**63 - 1


def install_openapi(app: FastAPI, settings: Settings) -> None:
    """Build the document once, on first request, with the settings' limits in it."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                routes=app.routes,
            )
            apply_limits(document["components"]["schemas"], settings)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def limits(settings: Settings) -> list[tuple[str, str, dict[str, Any]]]:
    """(schema, property, JSON Schema keywords) for every limit the settings set."""
    side = {"maximum": settings.largest_side}
    steps = {"maximum": settings.most_steps}
    text = {"maxLength": settings.max_prompt_length}
    model = {"enum": [settings.served_model_id]}
    size = {"pattern": rf"^(auto|{up_to(settings.largest_side)}x{up_to(settings.largest_side)})$"}
    return [
        ("CaikitTextToImageRequest", "model_id", model),
        ("CaikitTextToImageRequest", "inputs", text),
        ("CaikitParameters", "height", side),
        ("CaikitParameters", "width", side),
        ("CaikitParameters", "num_steps", steps),
        ("CaikitParameters", "negative_prompt", text),
        ("OpenAIImageRequest", "model", model),
        ("OpenAIImageRequest", "prompt", text),
        ("OpenAIImageRequest", "size", size),
        ("OpenAIImageRequest", "num_steps", steps),
        ("OpenAIImageRequest", "negative_prompt", text),
        ("OpenAIImageRequest", "response_format", {"enum": ["b64_json"]}),
        # pydantic writes 2**63 - 1 as the float 2**63, one more than a seed may be.
        ("CaikitParameters", "seed", {"maximum": SEED_MAX}),
        ("OpenAIImageRequest", "seed", {"maximum": SEED_MAX}),
    ]


def apply_limits(schemas: dict[str, Any], settings: Settings) -> None:
    for schema, prop, keywords in limits(settings):
        field = schemas[schema]["properties"][prop]
        # `X | None` is {"anyOf": [X, {"type": "null"}]}: the limit belongs to X.
        for branch in field.get("anyOf", [field]):
            if branch.get("type") != "null":
                branch.update(keywords)


def up_to(n: int) -> str:
    """A regular expression for the integers 1..n, without leading zeros (n ≥ 1)."""
    digits = str(n)
    parts = [rf"[1-9]\d{{0,{len(digits) - 2}}}"] if len(digits) > 1 else []
    for i, digit in enumerate(int(d) for d in digits):
        low = 1 if i == 0 else 0
        if digit > low:
            parts.append(rf"{digits[:i]}[{low}-{digit - 1}]\d{{{len(digits) - i - 1}}}")
    parts.append(digits)
    return "(" + "|".join(parts) + ")"
