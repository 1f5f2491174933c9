"""Image encoding (CPU-bound: always called off the event loop)."""

from __future__ import annotations

import io

from PIL import Image

from tti_contracts.api import ImageFormat

MEDIA_TYPES: dict[ImageFormat, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}


def encode_image(image: Image.Image, image_format: ImageFormat) -> bytes:
    buffer = io.BytesIO()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    rgb.save(buffer, format=image_format.upper())
    return buffer.getvalue()


def encode_images(images: list[Image.Image], image_format: ImageFormat) -> list[bytes]:
    return [encode_image(image, image_format) for image in images]


def encode_preview(image: Image.Image, width: int, height: int, image_format: ImageFormat) -> bytes:
    """A partial image (at the latents' resolution) scaled up to the requested size."""
    return encode_image(image.resize((width, height), Image.Resampling.BILINEAR), image_format)
