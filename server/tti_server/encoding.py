"""Image encoding (CPU-bound: always called off the event loop).

PNG's zlib level is the server's `--png-compress-level`, by default 1, the fastest
level that compresses: on noise (what random weights draw, the worst case) no level
saves a byte and PIL's default 6 takes 10 % longer (22 times JPEG's time);
tests/benchmarks/bench_png.py measures each level (docs/benchmarks.md).
"""

from __future__ import annotations

import io

from PIL import Image

from tti_contracts.api import ImageFormat

MEDIA_TYPES: dict[ImageFormat, str] = {
    "png": "image/png",
    "jpeg": "image/jpeg",
    "webp": "image/webp",
}

#: The server's default PNG level, chosen by tests/benchmarks/bench_png.py.
DEFAULT_PNG_COMPRESS_LEVEL = 1


def encode_image(
    image: Image.Image,
    image_format: ImageFormat,
    png_compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL,
) -> bytes:
    buffer = io.BytesIO()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    if image_format == "png":
        rgb.save(buffer, format="PNG", compress_level=png_compress_level)
    else:
        rgb.save(buffer, format=image_format.upper())
    return buffer.getvalue()


def encode_images(
    images: list[Image.Image],
    image_format: ImageFormat,
    png_compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL,
) -> list[bytes]:
    return [encode_image(image, image_format, png_compress_level) for image in images]


def encode_preview(
    image: Image.Image,
    width: int,
    height: int,
    image_format: ImageFormat,
    png_compress_level: int = DEFAULT_PNG_COMPRESS_LEVEL,
) -> bytes:
    """A partial image (at the latents' resolution) scaled up to the requested size."""
    resized = image.resize((width, height), Image.Resampling.BILINEAR)
    return encode_image(resized, image_format, png_compress_level)
