"""What the routes call: the loaded model behind the engine, plus encoding off the loop."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import partial

from tti_server import __version__
from tti_server.backends.base import GenerationRequest
from tti_server.encoding import encode_images
from tti_server.engine import Engine
from tti_server.settings import ImageFormat, Settings


@dataclass
class Service:
    """Per-app state: settings, and the engine once the model is loaded and warm."""

    settings: Settings
    engine: Engine | None = None
    load_error: str | None = None
    started: int = field(default_factory=lambda: int(time.time()))

    @property
    def model_id(self) -> str:
        return self.settings.served_model_id

    @property
    def producer(self) -> dict[str, str]:
        return {"name": f"tti-server {self.settings.model}", "version": __version__}

    async def generate(
        self, engine: Engine, request: GenerationRequest, image_format: ImageFormat
    ) -> list[bytes]:
        """Generate `request.n` images and encode them, neither on the event loop."""
        return await engine.generate_then(
            request, partial(encode_images, image_format=image_format)
        )
