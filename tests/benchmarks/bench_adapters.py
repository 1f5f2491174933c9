"""Benchmark: what serving two LoRA adapters costs (issue 23).

Two real `tti-server --model sdxl-turbo` processes with the tiny model on the CPU, batching
on: one with two tiny peft adapters (`make-tiny-adapter`, seeds 1 and 2), one with none.
`--clients` closed-loop OpenAI clients each alternate their requests between `tiny/a` and
`tiny/b` on the first; the same clients send the same load for the base model to the
second. Rounds alternate (background load hits both alike). Prints each round's images/s,
the medians and their ratio (adapters / none); then the cost of one switch, timed on a
backend loaded in this process: the selection a batch makes when its adapter differs
from the last batch's (`enable_lora` + `set_adapters`), A -> B and back, median of many.

    .venv/bin/python tests/benchmarks/bench_adapters.py [--clients 8] [--duration 5]
        [--rounds 2] [--size 64] [--switches 200]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from serving import ServerProcess, launch_server, print_rounds

from tti_server.backends.base import AdapterFile
from tti_server.tools.tiny_adapter import WEIGHT_NAME, write_tiny_adapter
from tti_server.tools.tiny_model import write_tiny_model

PATH = "/v1/images/generations"
MODEL = "tiny"


def images_per_s(server: ServerProcess, models: list[str], args: argparse.Namespace) -> float:
    """`clients` closed-loop clients for `duration` s, each cycling through `models`."""
    stop = threading.Event()

    def client(index: int) -> int:
        done = 0
        with httpx.Client(base_url=server.url, timeout=600) as http:
            while not stop.is_set():
                body = {
                    "model": models[(index + done) % len(models)],
                    "prompt": f"a kite {index}",
                    "size": f"{args.size}x{args.size}",
                    "seed": done,
                }
                http.post(PATH, json=body).raise_for_status()
                done += 1
        return done

    started = time.perf_counter()
    with ThreadPoolExecutor(args.clients) as pool:
        counts = [pool.submit(client, index) for index in range(args.clients)]
        time.sleep(args.duration)
        stop.set()
        images = sum(count.result() for count in counts)
    return images / (time.perf_counter() - started)


def switch_seconds(model: Path, adapters: dict[str, Path], count: int) -> list[float]:
    """Time the backend's switch between two loaded adapters, `count` times."""
    from tti_server.backends.diffusion import load_pipeline

    backend = load_pipeline(str(model), "cpu")
    files = [AdapterFile(name, path, WEIGHT_NAME) for name, path in adapters.items()]
    assert backend.update_adapters([], files) == {}
    names = list(adapters)
    backend.adapters.select(names[0], 1.0)
    timings = []
    for index in range(count):
        started = time.perf_counter()
        backend.adapters.select(names[(index + 1) % 2], 1.0)
        timings.append(time.perf_counter() - started)
    return timings


def start(scratch: Path, name: str, *extra: str) -> ServerProcess:
    return launch_server(
        ["--model", "sdxl-turbo", "--model-path", str(scratch / "model"), "--model-id", MODEL,
         "--max-batch-size", "4", "--batch-wait-ms", "20", *extra],
        scratch / f"logs-{name}",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--switches", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        write_tiny_model(scratch / "model")
        # Not one-letter names: diffusers finds an adapter's keys by substring, and "b" is in
        # every key of another adapter ("down_blocks"), which it then warns are missing.
        adapters = {"pixel": scratch / "pixel", "ink": scratch / "ink"}
        for seed, path in enumerate(adapters.values(), start=1):
            write_tiny_adapter(path, seed=seed)
        entries = ",".join(f'{{"name":"{n}","path":"{p}"}}' for n, p in adapters.items())
        (scratch / "adapters.json").write_text(f'{{"adapters":[{entries}]}}')
        adapted = start(scratch, "adapted", "--adapters-file", str(scratch / "adapters.json"))
        plain = start(scratch, "plain")
        styles = [f"{MODEL}/{name}" for name in adapters]
        loads = {"adapters": (adapted, styles), "none": (plain, [MODEL])}
        try:
            results: dict[str, list[float]] = {name: [] for name in loads}
            for _ in range(args.rounds):
                for name, (server, models) in loads.items():
                    results[name].append(images_per_s(server, models, args))
        finally:
            adapted.stop()
            plain.stop()
        switches = switch_seconds(scratch / "model", adapters, args.switches)
    print(
        f"{args.clients} closed-loop clients, {args.rounds} rounds of {args.duration:g} s each, "
        f"{args.size}x{args.size}, 1 step, tiny SDXL-Turbo on the CPU, batches of up to 4"
    )
    rates = print_rounds(results, lambda name: f"{name:>8}")
    print(f"ratio (adapters / none): {rates['adapters'] / rates['none']:.3f}")
    print(
        f"one switch (enable_lora + set_adapters, A <-> B): median "
        f"{statistics.median(switches) * 1e3:.3f} ms of {len(switches)} "
        f"(p90 {statistics.quantiles(switches, n=10)[-1] * 1e3:.3f} ms)"
    )


if __name__ == "__main__":
    main()
