"""Benchmark: a stub tti-server reached through tti-gateway and straight, in the same run.

Two measures, each alternating between the two paths in rounds (the median round counts):

- **latency added**: one connection, one request after another; p50 through the gateway
  minus p50 straight (target: at most 2 ms);
- **throughput**: `--connections` keep-alive connections; through / straight (target: at
  least 0.85).

Placement on the two-core machine: the server on core 0 (as in bench_stub_server.py), the
gateway and the load generator on core 1. The stub answers a 64x64 image in a few hundred
microseconds of CPU, so the gateway's own CPU per request is a large share of the whole:
this is the worst case; with a real model (tens of milliseconds per image) the same
added cost is noise. `--stub-latency-ms` makes the stub pretend to be slower.

    .venv/bin/python tests/benchmarks/bench_gateway.py [--duration 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rawload
from bench_stub_server import cpu_seconds, run_load, start
from support.server import free_port, stop_process

PATH = "/api/v1/task/text-to-image"
MODEL = "stub"
BODY = json.dumps(
    {"model_id": MODEL, "inputs": "a blue square", "parameters": {"height": 64, "width": 64}}
)
TARGET_RATIO = 0.85
TARGET_ADDED_P50_MS = 2.0


def load(url: str, duration: float, connections: int) -> dict[str, float]:
    result: dict[str, float] = json.loads(
        run_load(rawload.command(url, PATH, BODY, duration, connections))
    )
    if result["bad"]:
        raise SystemExit(f"{url}: {result['bad']:.0f} failed responses; the comparison is void")
    return result


def start_both(args: argparse.Namespace) -> tuple[dict[str, str], list[object]]:
    server_port, gateway_port = free_port(), free_port()
    server = start(
        [sys.executable, "-m", "tti_server", "--model", "stub", "--host", "127.0.0.1",
         "--port", str(server_port), "--grpc-port", "0", "--log-level", "warning",
         "--stub-latency-ms", str(args.stub_latency_ms)],
        server_port,
    )  # fmt: skip
    gateway = start(
        [sys.executable, "-m", "tti_gateway", "--host", "127.0.0.1", "--port", str(gateway_port),
         "--metrics-port", str(free_port()),
         "--models", f"{MODEL}=http://127.0.0.1:{server_port}", "--log-level", "warning"],
        gateway_port,
        role="load",
    )  # fmt: skip
    urls = {
        "straight": f"http://127.0.0.1:{server_port}",
        "gateway": f"http://127.0.0.1:{gateway_port}",
    }
    return urls, [server, gateway]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per path (alternating)")
    parser.add_argument("--connections", type=int, default=16, help="for the throughput")
    parser.add_argument("--stub-latency-ms", type=float, default=0.0, help="stub's pretend work")
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two cores: one for the server, one for the gateway and load")
    urls, processes = start_both(args)
    _server, gateway = processes
    print(
        f"POST {PATH}, 64x64 PNG in caikit JSON, stub latency {args.stub_latency_ms:g} ms; "
        f"{args.duration:g} s x {args.rounds} rounds; server on core 0, gateway and load on 1"
    )
    p50: dict[str, list[float]] = {name: [] for name in urls}
    rate: dict[str, list[float]] = {name: [] for name in urls}
    try:
        for url in urls.values():
            load(url, 1, args.connections)  # warm-up: connections, caches
        gateway_cpu = cpu_seconds(gateway.pid)  # type: ignore[attr-defined]
        gateway_requests = 0.0
        for number in range(1, args.rounds + 1):
            for name, url in urls.items():
                one = load(url, args.duration, 1)
                many = load(url, args.duration, args.connections)
                p50[name].append(one["p50_ms"])
                rate[name].append(many["rate"])
                if name == "gateway":
                    gateway_requests += (one["rate"] + many["rate"]) * args.duration
                print(
                    f"round {number} {name:<9} p50 {one['p50_ms']:6.2f} ms (1 connection)  "
                    f"{many['rate']:7.0f} req/s ({args.connections} connections)",
                    flush=True,
                )
        gateway_cpu = cpu_seconds(gateway.pid) - gateway_cpu  # type: ignore[attr-defined]
    finally:
        for process in processes:
            stop_process(process)  # type: ignore[arg-type]
    report(p50, rate, gateway_cpu / gateway_requests * 1e6)


def report(p50: dict[str, list[float]], rate: dict[str, list[float]], cpu_us: float) -> None:
    median_p50 = {name: statistics.median(values) for name, values in p50.items()}
    median_rate = {name: statistics.median(values) for name, values in rate.items()}
    added = median_p50["gateway"] - median_p50["straight"]
    ratio = median_rate["gateway"] / median_rate["straight"]
    print("median of the rounds:")
    for name in p50:
        print(f"  {name:<9} p50 {median_p50[name]:6.2f} ms  {median_rate[name]:7.0f} req/s")
    verdict = "meets" if added <= TARGET_ADDED_P50_MS else "ABOVE"
    print(f"p50 added by the gateway   = {added:.2f} ms ({verdict} the target "
          f"{TARGET_ADDED_P50_MS:g} ms)")  # fmt: skip
    verdict = "meets" if ratio >= TARGET_RATIO else "BELOW"
    print(f"throughput gateway/straight = {ratio:.2f} ({verdict} the target {TARGET_RATIO})")
    print(f"gateway CPU per request     = {cpu_us:.0f} us")


if __name__ == "__main__":
    main()
