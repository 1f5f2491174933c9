"""What the benchmarks that drive real `tti-server` processes share.

`engine_counts` reads how many images the engine made and in how many pipeline calls, from
a server's /metrics; `one_client_times` times one client's requests one after another;
`closed_loop` runs clients that each send their next request when answered, and gives
images/s and the mean images per pipeline call (requests are caikit's, through HTTP);
`print_rounds` prints each side's median and rounds. Importing this module puts `tests/` on
`sys.path`; `launch_server` and `ServerProcess` are `support.server`'s, for the benchmarks.
"""

from __future__ import annotations

import re
import statistics
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

from support.server import ServerProcess, launch_server  # noqa: E402

from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE  # noqa: E402

__all__ = [
    "REPO",
    "ServerProcess",
    "closed_loop",
    "engine_counts",
    "launch_server",
    "one_client_times",
    "print_rounds",
]

Body = dict[str, Any]
Side = TypeVar("Side")


def engine_counts(server: ServerProcess) -> tuple[float, float]:
    """(images generated, pipeline calls that succeeded) so far, from the server's /metrics."""
    text = httpx.get(server.url + "/metrics", timeout=30).text
    images = re.search(r"^tti_images_generated_total ([0-9.e+]+)$", text, re.MULTILINE)
    batches = re.search(r'^tti_batches_total\{outcome="ok"\} ([0-9.e+]+)$', text, re.MULTILINE)
    if not images or not batches:
        raise RuntimeError("the server's /metrics lacks tti_images_generated or tti_batches")
    return float(images.group(1)), float(batches.group(1))


def one_client_times(
    server: ServerProcess, samples: int, body: Callable[[int], Body], timeout: float = 120
) -> list[float]:
    """Seconds each of `samples` requests `body(seed)` took, sent one after another by one
    client after two (seeds 0 and 1) that only warm the connection and the format up."""
    times = []
    with httpx.Client(base_url=server.url, timeout=timeout) as client:
        for seed in range(samples + 2):
            started = time.perf_counter()
            client.post(CAIKIT_TEXT_TO_IMAGE, json=body(seed)).raise_for_status()
            if seed >= 2:
                times.append(time.perf_counter() - started)
    return times


def closed_loop(
    server: ServerProcess,
    clients: int,
    per_client: int,
    warm_up: Callable[[int], Body],
    request: Callable[[int, int], Body],
) -> tuple[float, float]:
    """Images/s of `clients` closed-loop clients, and the mean images per pipeline call.

    Client `index` sends `warm_up(index)`; once every client has had its answer, each sends
    `request(index, number)` for `number` in `range(per_client)`, the next when answered.
    """
    start_line = threading.Barrier(clients + 1)

    def one_client(index: int) -> None:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            client.post(CAIKIT_TEXT_TO_IMAGE, json=warm_up(index)).raise_for_status()
            start_line.wait()
            for number in range(per_client):
                client.post(CAIKIT_TEXT_TO_IMAGE, json=request(index, number)).raise_for_status()

    with ThreadPoolExecutor(clients) as pool:
        done = [pool.submit(one_client, index) for index in range(clients)]
        start_line.wait()
        images_before, batches_before = engine_counts(server)
        started = time.perf_counter()
        for future in done:
            future.result()
        elapsed = time.perf_counter() - started
    images, batches = engine_counts(server)
    mean_batch = (images - images_before) / max(1.0, batches - batches_before)
    return clients * per_client / elapsed, mean_batch


def print_rounds(
    rounds: Mapping[Side, list[float]], label: Callable[[Side], str] = str
) -> dict[Side, float]:
    """Print a line per side: its median images/s and each round's; return the medians."""
    medians = {side: statistics.median(values) for side, values in rounds.items()}
    for side, values in rounds.items():
        each = ", ".join(f"{value:.2f}" for value in values)
        print(f"{label(side)}: median {medians[side]:.2f} images/s (rounds: {each})")
    return medians
