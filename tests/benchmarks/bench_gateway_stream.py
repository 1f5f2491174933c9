"""Benchmark: how much later a model's streamed events reach the client through tti-gateway
than straight from the pod, in the same run.

The pod is an `EventPod` (tests/support/event_pod.py, in this process): OpenAI's image
events (`--partials` partial images, then the completed image, `--gap-ms` apart, each with
`--payload-kib` of image), each stamped with `time.monotonic_ns()` as the pod writes it. The
client (httpx, in this process) reads the stream on a kept-alive connection and stamps each
event's arrival (its `data:` line whole) on the same clock. Straight and through the gateway
alternate stream by stream, so the machine's load falls on both alike. Printed per event:
the median latency of each path and the difference, the gateway's added latency (target:
the first event within a few milliseconds of leaving the pod).

The gateway runs on core 1 (as in bench_gateway.py); the pod and the client share the
machine otherwise.

    .venv/bin/python tests/benchmarks/bench_gateway_stream.py [--streams 30] [--payload-kib 1 256]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx
from bench_stub_server import start
from support.event_pod import EventPod, Pace
from support.server import free_port, stop_process

PATH = "/v1/images/generations"
MODEL = "m"
TARGET_FIRST_MS = 5.0


def latencies_ms(client: httpx.Client, url: str, partials: int) -> list[float]:
    """One stream: each event's arrival minus its sending, in order."""
    body = {"model": MODEL, "prompt": "a lighthouse", "stream": True, "partial_images": partials}
    found: list[float] = []
    with client.stream("POST", url + PATH, json=body) as answer:
        answer.raise_for_status()
        for line in answer.iter_lines():
            if line.startswith("data: "):
                arrived = time.monotonic_ns()
                found.append((arrived - json.loads(line[6:])["sent_ns"]) / 1e6)
    if len(found) != partials + 1:
        raise SystemExit(f"{url}: {len(found)} events, expected {partials + 1}")
    return found


def measure(urls: dict[str, str], streams: int, partials: int) -> dict[str, list[list[float]]]:
    """Per path, per event index: the latencies of every stream (after one to warm up)."""
    found: dict[str, list[list[float]]] = {name: [[] for _ in range(partials + 1)] for name in urls}
    clients = {name: httpx.Client(timeout=60) for name in urls}
    try:
        for number in range(streams + 1):
            for name, url in urls.items():
                one = latencies_ms(clients[name], url, partials)
                if number:  # the first opened the connections
                    for index, value in enumerate(one):
                        found[name][index].append(value)
    finally:
        for client in clients.values():
            client.close()
    return found


def report(found: dict[str, list[list[float]]], payload_kib: int) -> float:
    """Prints the medians per event; returns the first event's added latency."""
    print(f"events of {payload_kib} KiB of image (base64: {payload_kib * 4 / 3:.0f} KiB):")
    print("  event        straight p50   gateway p50   added p50   gateway p90")
    added_first = 0.0
    paths = zip(found["straight"], found["gateway"], strict=True)
    for index, (straight, through) in enumerate(paths):
        added = statistics.median(through) - statistics.median(straight)
        added_first = added_first if index else added
        name = "completed" if index == len(found["gateway"]) - 1 else f"partial {index}"
        p90 = statistics.quantiles(through, n=10)[-1]
        print(
            f"  {name:<11} {statistics.median(straight):9.2f} ms  "
            f"{statistics.median(through):9.2f} ms  {added:8.2f} ms  {p90:9.2f} ms"
        )
    return added_first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=30, help="streams per path and size")
    parser.add_argument("--partials", type=int, default=3, help="partial images per stream")
    parser.add_argument("--gap-ms", type=float, default=50.0, help="between two events")
    parser.add_argument(
        "--payload-kib", type=int, nargs="+", default=[1, 256], help="image bytes per event"
    )
    args = parser.parse_args()
    pod = EventPod(Pace.GAP, gap=args.gap_ms / 1000)
    port = free_port()
    gateway = start(
        [sys.executable, "-m", "tti_gateway", "--host", "127.0.0.1", "--port", str(port),
         "--metrics-port", str(free_port()), "--models", f"{MODEL}={pod.url}",
         "--log-level", "warning"],
        port,
        role="load",
    )  # fmt: skip
    urls = {"straight": pod.url, "gateway": f"http://127.0.0.1:{port}"}
    print(
        f"POST {PATH} stream: {args.partials} partial images + completed, {args.gap_ms:g} ms "
        f"apart; {args.streams} streams per path, alternating; gateway on core 1"
    )
    try:
        for kib in args.payload_kib:
            pod.payload_bytes = kib * 1024
            added = report(measure(urls, args.streams, args.partials), kib)
            verdict = "meets" if added <= TARGET_FIRST_MS else "ABOVE"
            print(f"  first event added by the gateway = {added:.2f} ms ({verdict} "
                  f"the target {TARGET_FIRST_MS:g} ms)")  # fmt: skip
    finally:
        stop_process(gateway)
        pod.close()


if __name__ == "__main__":
    main()
