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
_FORMAT_BY_MEDIA_TYPE = {media: fmt for fmt, media in MEDIA_TYPES.items()}


def encode_image(image: Image.Image, image_format: ImageFormat) -> bytes:
    buffer = io.BytesIO()
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    rgb.save(buffer, format=image_format.upper())
    return buffer.getvalue()


def encode_images(images: list[Image.Image], image_format: ImageFormat) -> list[bytes]:
    return [encode_image(image, image_format) for image in images]


def raw_format_accepted(accept: str | None, requested: ImageFormat) -> ImageFormat | None:
    """The image format to answer with as raw bytes, or None for the JSON answer.

    Media types are taken in the order listed (q-values are not weighed);
    `image/*` means the format the request asked for. Anything else, even a type
    this server cannot produce, means JSON: the caikit runtime ignores Accept.
    """
    for item in (accept or "").split(","):
        media = item.split(";", 1)[0].strip().lower()
        if media in _FORMAT_BY_MEDIA_TYPE:
            return _FORMAT_BY_MEDIA_TYPE[media]
        if media == "image/*":
            return requested
        if media in {"application/json", "application/*", "*/*"}:
            return None
    return None
