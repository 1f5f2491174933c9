"""Benchmark: PNG at each zlib level against JPEG (and WebP), as the server encodes them.

Two 512x512 RGB images: uniform noise (what random-weight models draw, and the worst
case for PNG: nothing to compress, so every level's time is spent in vain) and a smooth
two-way gradient (an easy picture). Each is encoded with the server's own
`encode_image` at PNG levels 0-9, then as JPEG and WebP at PIL's defaults; the table
shows the median milliseconds and the bytes of each, side by side. Alternating rounds
(every format once per round) keep drift in background load out of the comparison.
Last, a batch of 8 noise images at the server's default level, encoded one after
another and on a pool of threads as the engine's finishing pool does (PIL releases
the GIL while it encodes).

    .venv/bin/python tests/benchmarks/bench_png.py [--rounds 15] [--size 512]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from tti_contracts.api import ImageFormat
from tti_server.encoding import DEFAULT_PNG_COMPRESS_LEVEL, encode_image

Encoder = Callable[[Image.Image], bytes]


def noise(size: int) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels, "RGB")


def gradient(size: int) -> Image.Image:
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    red = np.broadcast_to(ramp[None, :], (size, size))
    green = np.broadcast_to(ramp[:, None], (size, size))
    blue = (red + green) / 2
    pixels = np.stack([red, green, blue], axis=-1).astype(np.uint8)
    return Image.fromarray(pixels, "RGB")


def encoders() -> dict[str, Encoder]:
    """Each column of the table: a label and how it encodes."""

    def png(level: int) -> Encoder:
        return lambda image: encode_image(image, "png", png_compress_level=level)

    def other(image_format: ImageFormat) -> Encoder:
        return lambda image: encode_image(image, image_format)

    columns = {f"png {level}": png(level) for level in range(10)}
    return {**columns, "jpeg": other("jpeg"), "webp": other("webp")}


def measure(image: Image.Image, rounds: int) -> dict[str, tuple[float, int]]:
    """Median ms and bytes per encoder, the encoders interleaved round by round."""
    columns = encoders()
    times: dict[str, list[float]] = {label: [] for label in columns}
    sizes = {label: len(encode(image)) for label, encode in columns.items()}  # also warms up
    for _ in range(rounds):
        for label, encode in columns.items():
            started = time.perf_counter()
            encode(image)
            times[label].append(time.perf_counter() - started)
    return {label: (statistics.median(times[label]) * 1000, sizes[label]) for label in columns}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="encodings per format and image")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    args = parser.parse_args()

    images = {"noise": noise(args.size), "gradient": gradient(args.size)}
    results = {name: measure(image, args.rounds) for name, image in images.items()}
    default = DEFAULT_PNG_COMPRESS_LEVEL
    print(f"{args.size}x{args.size} RGB, median of {args.rounds}; server default: png {default}")
    header = f"{'':10}" + "".join(f"{name + ' ms':>12}{name + ' KiB':>14}" for name in images)
    print(header + f"{'noise ms / jpeg':>17}")
    for label in encoders():
        row = f"{label:10}"
        for name in images:
            ms, size = results[name][label]
            row += f"{ms:>12.2f}{size / 1024:>14.1f}"
        row += f"{results['noise'][label][0] / results['noise']['jpeg'][0]:>17.1f}"
        print(row)
    batch_side_by_side(images["noise"], max(3, args.rounds // 3))


def batch_side_by_side(image: Image.Image, rounds: int, batch: int = 8) -> None:
    threads = max(2, min(batch, os.cpu_count() or 2))
    encode: Encoder = lambda picture: encode_image(picture, "png")  # noqa: E731
    images = [image.copy() for _ in range(batch)]
    one_by_one, side_by_side = [], []
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(encode, images))  # starts the threads
        for _ in range(rounds):
            started = time.perf_counter()
            for picture in images:
                encode(picture)
            one_by_one.append(time.perf_counter() - started)
            started = time.perf_counter()
            list(pool.map(encode, images))
            side_by_side.append(time.perf_counter() - started)
    alone, pooled = statistics.median(one_by_one), statistics.median(side_by_side)
    print(
        f"{batch} noise PNGs at level {DEFAULT_PNG_COMPRESS_LEVEL}: {alone * 1000:.1f} ms one "
        f"after another, {pooled * 1000:.1f} ms on {threads} threads ({alone / pooled:.2f}x)"
    )


if __name__ == "__main__":
    main()
