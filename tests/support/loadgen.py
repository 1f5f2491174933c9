"""Closed-loop load: CONCURRENCY clients each sending one request after the other.

Run inside a client pod (its source is the pod's `python3 -c` script, standard library only)
or on the host: `python3 loadgen.py URL MODEL CONCURRENCY SECONDS [SIZE]`. It prints one
JSON line: requests answered, failures by status, and latency percentiles in ms.
"""

import json
import sys
import threading
import time
import urllib.error
import urllib.request


def main(url: str, model: str, concurrency: int, seconds: float, size: int = 8) -> None:
    body = json.dumps({"model": model, "prompt": "load", "size": f"{size}x{size}"}).encode()
    route = url.rstrip("/") + "/v1/images/generations"
    latencies: list[float] = []
    failures: dict[str, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < stop_at:
            request = urllib.request.Request(route, body, {"Content-Type": "application/json"})
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(request, timeout=60) as response:
                    response.read()
                outcome = None
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

    def percentile(p: float) -> float:
        return round(1000 * ordered[min(len(ordered) - 1, int(p * len(ordered)))], 2)

    summary = {
        "answered": len(ordered),
        "failures": failures,
        "seconds": round(elapsed, 2),
        "per_second": round(len(ordered) / elapsed, 1),
        "p50_ms": percentile(0.5) if ordered else None,
        "p99_ms": percentile(0.99) if ordered else None,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    url, model, concurrency, seconds, *rest = sys.argv[1:]
    main(url, model, int(concurrency), float(seconds), *(int(x) for x in rest))
