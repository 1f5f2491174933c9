"""What the benchmarks that drive real `tti-server` processes share.

`engine_counts` reads how many images the engine made and in how many pipeline calls, from
a server's /metrics. Importing this module puts `tests/` on `sys.path`, for `support`.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from support.server import ServerProcess  # noqa: E402


def engine_counts(server: ServerProcess) -> tuple[float, float]:
    """(images generated, pipeline calls that succeeded) so far, from the server's /metrics."""
    text = httpx.get(server.url + "/metrics", timeout=30).text
    images = re.search(r"^tti_images_generated_total ([0-9.e+]+)$", text, re.MULTILINE)
    batches = re.search(r'^tti_batches_total\{outcome="ok"\} ([0-9.e+]+)$', text, re.MULTILINE)
    if not images or not batches:
        raise RuntimeError("the server's /metrics lacks tti_images_generated or tti_batches")
    return float(images.group(1)), float(batches.group(1))
