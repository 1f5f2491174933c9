"""Shared fixtures live in tests/support/; each module there is a pytest plugin."""

pytest_plugins: list[str] = [
    "support.server",
    "support.helm",
    "support.cluster",
    "support.tiny_model",
    "support.browser",
    "support.gateway",
]
