"""Closed-loop load: CONCURRENCY clients, each sending one request after the other.

Runs inside a client pod (its source is the pod's `python3 -c` script: standard library
only) or on the host:

    python3 loadgen.py MODEL CONCURRENCY SECONDS URL [URL ...] [--rounds N] [--token T]

Each round loads every URL in turn, for SECONDS each (so alternating targets share the
machine's ups and downs), and prints one JSON line per URL: requests answered, failures by
status, and latency percentiles in ms.
"""

import argparse
import json
import threading
import time
import urllib.error
import urllib.request


def load(
    url: str, model: str, concurrency: int, seconds: float, size: int, token: str | None
) -> dict[str, object]:
    body = json.dumps({"model": model, "prompt": "load", "size": f"{size}x{size}"}).encode()
    route = url.rstrip("/") + "/v1/images/generations"
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    latencies: list[float] = []
    failures: dict[str, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < stop_at:
            request = urllib.request.Request(route, body, headers)
            started = time.perf_counter()
            outcome = None
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    response.read()
            except urllib.error.HTTPError as error:
                outcome = str(error.code)
            except OSError as error:
                outcome = type(error).__name__
            with lock:
                if outcome is None:
                    latencies.append(time.perf_counter() - started)
                else:
                    failures[outcome] = failures.get(outcome, 0) + 1

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    ordered = sorted(latencies)

    def percentile(p: float) -> float | None:
        if not ordered:
            return None
        return round(1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)

    return {
        "url": url,
        "answered": len(ordered),
        "failures": failures,
        "seconds": round(elapsed, 2),
        "per_second": round(len(ordered) / elapsed, 1),
        "p50_ms": percentile(0.5),
        "p99_ms": percentile(0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("concurrency", type=int)
    parser.add_argument("seconds", type=float)
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--size", type=int, default=8, help="image side in pixels")
    parser.add_argument("--token", help="bearer token, for a gateway with auth on")
    args = parser.parse_args()
    for _ in range(args.rounds):
        for url in args.urls:
            result = load(url, args.model, args.concurrency, args.seconds, args.size, args.token)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
