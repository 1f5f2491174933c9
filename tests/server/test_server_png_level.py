"""`--png-compress-level` reaches the encoder: the same image at levels 0 and 9 gives
different bytes that decode to the same pixels, over HTTP from the real app."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import pytest
from PIL import Image

from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE as CAIKIT
from tti_server.app import create_app
from tti_server.backends.base import GenerationRequest
from tti_server.backends.stub import StubBackend
from tti_server.cli import load_settings
from tti_server.settings import Settings

SIDE = 64


class Gradient(StubBackend):
    """The stub drawing a gradient: compressible, so the zlib level shows in the bytes."""

    def generate(self, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
        pixels = bytes((x * 4) % 256 for y in range(SIDE) for x in range(SIDE) for _ in range(3))
        image = Image.frombytes("RGB", (SIDE, SIDE), pixels)
        return [[image.copy() for _ in range(r.n)] for r in batch]


def png_at_level(level: int) -> bytes:
    app = create_app(Settings(png_compress_level=level), backends=[Gradient()])

    async def main() -> bytes:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                for _ in range(500):
                    if (await client.get("/readyz")).status_code == 200:
                        break
                    await asyncio.sleep(0.01)
                body = {"inputs": "x", "parameters": {"height": SIDE, "image_format": "png"}}
                answer = await client.post(CAIKIT, json=body)
                answer.raise_for_status()
                return base64.b64decode(answer.json()["output"]["image_data"])

    return asyncio.run(main())


def test_the_png_level_reaches_the_encoder() -> None:
    stored, packed = png_at_level(0), png_at_level(9)
    assert stored != packed
    assert len(packed) < len(stored)
    decoded = [Image.open(io.BytesIO(data)) for data in (stored, packed)]
    assert all(image.format == "PNG" for image in decoded)
    assert decoded[0].tobytes() == decoded[1].tobytes()


def test_the_level_is_a_flag_and_a_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TTI_PNG_COMPRESS_LEVEL", "3")
    assert load_settings([]).png_compress_level == 3
    assert load_settings(["--png-compress-level", "9"]).png_compress_level == 9
