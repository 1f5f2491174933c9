"""Benchmark: what streamed partial images cost in throughput (issue 24).

One real `tti-server --model sdxl` with the tiny multi-step model on the CPU, batching on.
Several clients each send streamed OpenAI requests one after another and read every
event; a round with `partial_images: 3` and a round with `partial_images: 0` alternate
(so drift in background load hits both alike). Prints each round's images/s, the median
of each side (a round whose core was taken elsewhere does not drag it) and their ratio
(with / without previews).

    .venv/bin/python tests/benchmarks/bench_previews.py [--clients 4] [--per-client 6]
        [--rounds 5] [--steps 12] [--size 128]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from serving import ServerProcess, launch_server, print_rounds

from tti_server.tools.tiny_model import write_tiny_model

PATH = "/v1/images/generations"


def one_request(http: httpx.Client, args: argparse.Namespace, partial: int, seed: int) -> int:
    """One streamed request, read to its end; returns the partial images it brought."""
    body = {
        "prompt": f"a kite {seed}",
        "size": f"{args.size}x{args.size}",
        "num_steps": args.steps,
        "guidance_scale": 0,
        "seed": seed,
        "stream": True,
        "partial_images": partial,
    }
    partials = completed = 0
    with http.stream("POST", PATH, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            partials += line == "event: image_generation.partial_image"
            completed += line == "event: image_generation.completed"
    assert completed == 1, f"a stream ended with {completed} images"
    return partials


def round_images_per_s(server: ServerProcess, args: argparse.Namespace, partial: int) -> float:
    """`clients` closed-loop clients, `per_client` requests each: images per second."""

    def client(index: int) -> int:
        with httpx.Client(base_url=server.url, timeout=600) as http:
            return sum(
                one_request(http, args, partial, index * 1000 + n) for n in range(args.per_client)
            )

    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        partials = sum(pool.map(client, range(args.clients)))
    elapsed = time.perf_counter() - started
    images: int = args.clients * args.per_client
    assert partials == images * min(partial, args.steps - 1), "fewer previews than expected"
    return images / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--per-client", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        model = Path(scratch) / "tiny-sdxl"
        write_tiny_model(model)
        server = launch_server(
            ["--model", "sdxl", "--model-path", str(model), "--max-batch-size", "4",
             "--batch-wait-ms", "20"],
            Path(scratch) / "logs",
        )  # fmt: skip
        try:
            round_images_per_s(server, args, 0)  # warm-up
            results: dict[int, list[float]] = {3: [], 0: []}
            for _ in range(args.rounds):
                for partial in results:
                    results[partial].append(round_images_per_s(server, args, partial))
        finally:
            server.stop()
    print(
        f"{args.clients} clients x {args.per_client} requests, {args.rounds} rounds each, "
        f"{args.size}x{args.size}, {args.steps} steps, tiny SDXL on the CPU"
    )
    rates = print_rounds(results, lambda partial: f"partial_images={partial}")
    print(f"ratio (3 / 0): {rates[3] / rates[0]:.3f}")


if __name__ == "__main__":
    main()
