"""The stub model: a solid image of the requested size, like the seed's `TTIStub`."""

from __future__ import annotations

import time

from PIL import Image

from tti_server.backends.base import GenerationRequest

#: The seed's stub colour: R=0, G=100, B=200.
STUB_COLOR = (0, 100, 200)


class StubBackend:
    """Needs no weights and no torch; `latency_s` lets tests and demos fake a slow model."""

    name = "stub"

    def __init__(self, device: str = "cpu", latency_s: float = 0.0) -> None:
        self.device = device
        self.latency_s = latency_s

    def generate(self, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
        if self.latency_s:
            time.sleep(self.latency_s)
        return [
            [Image.new("RGB", (r.key.width, r.key.height), STUB_COLOR) for _ in range(r.n)]
            for r in batch
        ]

    def release_memory(self) -> None:
        """Nothing is cached."""
