"""Benchmark: tti-server --model sdxl-turbo with the tiny model on the CPU, 64x64, one step.

Side by side in one run:

(a) latency: a direct pipeline call in this process against the same request
    through HTTP (a real `tti-server`, batching off, one client, caikit JSON with
    a PNG). Ratio = HTTP p50 / direct p50; target <= 1.15. Rounds alternate
    between the two (the idle side uses no CPU), so drift in background load
    hits both alike.
(b) throughput: 8 concurrent clients, each sending its requests one after
    another, against `--max-batch-size 8` and against `--max-batch-size 1`.
    Ratio = images/s batched / unbatched; target >= 1.6.

    .venv/bin/python tests/benchmarks/bench_sdxl_cpu.py [--samples 40] [--per-client 12]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import torch
from serving import ServerProcess, closed_loop, launch_server

from tti_server.backends.diffusion import load_pipeline
from tti_server.tools.tiny_model import write_tiny_model

PATH = "/api/v1/task/text-to-image"
SIZE = 64
LATENCY_TARGET = 1.15
THROUGHPUT_TARGET = 1.6


def body(prompt: str, seed: int) -> dict[str, Any]:
    return {"inputs": prompt, "parameters": {"height": SIZE, "width": SIZE, "seed": seed}}


def timings(call: Callable[[int], object], samples: int, warm_up: int = 3) -> list[float]:
    for index in range(warm_up):
        call(index)
    times = []
    for index in range(samples):
        started = time.perf_counter()
        call(index)
        times.append(time.perf_counter() - started)
    return times


def latencies(
    model_dir: Path, server: ServerProcess, samples: int, rounds: int
) -> tuple[list[float], list[float]]:
    """(direct, HTTP) seconds per request, in alternating rounds."""
    pipeline = load_pipeline(str(model_dir), "cpu").pipeline

    def direct(seed: int) -> object:
        with torch.inference_mode():
            return pipeline(
                prompt="a lighthouse",
                height=SIZE,
                width=SIZE,
                num_inference_steps=1,
                guidance_scale=0.0,
                generator=torch.Generator().manual_seed(seed),
            ).images[0]

    direct_times: list[float] = []
    http_times: list[float] = []
    with httpx.Client(base_url=server.url, timeout=60) as client:

        def http(seed: int) -> object:
            response = client.post(PATH, json=body("a lighthouse", seed))
            response.raise_for_status()
            return response.json()

        for _ in range(rounds):
            direct_times += timings(direct, samples // rounds)
            http_times += timings(http, samples // rounds)
    return direct_times, http_times


def throughput(server: ServerProcess, clients: int, per_client: int) -> tuple[float, float]:
    """Images/s with `clients` closed-loop clients, and the mean images per pipeline call."""
    return closed_loop(
        server,
        clients,
        per_client,
        warm_up=lambda index: body("warm-up", index),
        request=lambda index, number: body(f"client {index}", index * 1000 + number),
    )


def start(model_dir: Path, log_dir: Path, max_batch_size: int) -> ServerProcess:
    args = ["--model", "sdxl-turbo", "--model-path", str(model_dir), "--workers", "1"]
    args += ["--max-batch-size", str(max_batch_size), "--batch-wait-ms", "20"]
    args += ["--max-queue", "256"]
    return launch_server(args, log_dir)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=40, help="latency samples per side")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds in (a)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients in (b)")
    parser.add_argument("--per-client", type=int, default=12, help="requests per client in (b)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-sdxl-cpu-") as scratch:
        model_dir, log_dir = Path(scratch) / "tiny", Path(scratch) / "logs"
        print(f"writing the tiny model to {model_dir}", flush=True)
        write_tiny_model(model_dir)

        print(f"(a) latency, {SIZE}x{SIZE}, 1 step, {args.samples} samples a side", flush=True)
        server = start(model_dir, log_dir, max_batch_size=1)
        try:
            direct, http = latencies(model_dir, server, args.samples, args.rounds)
            print(f"(b) throughput, {args.clients} clients, batching off", flush=True)
            unbatched, unbatched_mean = throughput(server, args.clients, args.per_client)
        finally:
            server.stop()

        print(f"(b) throughput, {args.clients} clients, --max-batch-size 8", flush=True)
        server = start(model_dir, log_dir, max_batch_size=8)
        try:
            batched, batched_mean = throughput(server, args.clients, args.per_client)
        finally:
            server.stop()

    direct_p50, http_p50 = statistics.median(direct), statistics.median(http)
    latency_ratio = http_p50 / direct_p50
    throughput_ratio = batched / unbatched
    print()
    print(f"{'':34}{'p50 ms':>10}")
    print(f"{'direct pipeline call':34}{direct_p50 * 1000:>10.1f}")
    print(f"{'HTTP end to end (caikit JSON, png)':34}{http_p50 * 1000:>10.1f}")
    verdict = "meets" if latency_ratio <= LATENCY_TARGET else "MISSES"
    print(f"(a) HTTP / direct = {latency_ratio:.3f}  ({verdict} target <= {LATENCY_TARGET})")
    print()
    print(f"{'':34}{'images/s':>10}{'images/call':>13}")
    print(f"{'--max-batch-size 1':34}{unbatched:>10.1f}{unbatched_mean:>13.2f}")
    print(f"{'--max-batch-size 8':34}{batched:>10.1f}{batched_mean:>13.2f}")
    verdict = "meets" if throughput_ratio >= THROUGHPUT_TARGET else "MISSES"
    print(f"(b) batched / unbatched = {throughput_ratio:.2f}x  ({verdict} target >= 1.6x)")


if __name__ == "__main__":
    main()
