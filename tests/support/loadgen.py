"""Requests to image models: closed-loop load, or named requests sent at once.

Runs inside a client pod (its source is the pod's `python3 -c` script: standard library
only) or on the host, in two modes:

    python3 loadgen.py load MODEL CONCURRENCY SECONDS URL [URL ...] [--rounds N] [--token T]

closed-loop load: CONCURRENCY clients, each sending one request after the other. Each round
loads every URL in turn, for SECONDS each (so alternating targets share the machine's ups
and downs), and prints one JSON line per URL: requests answered, failures by status, and
latency percentiles in ms.

    python3 loadgen.py at-once URL '{"NAME": {"model": M, "token": T, "prompt_bytes": N,
                                              "size": S, "timeout": SECONDS}, ...}'

sends every named request at once and prints one JSON line: for each name its status, the
error envelope's details, Retry-After, and when it was sent, when the answer's first byte
came (its status line) and when the whole answer had come (this clock).
"""

import argparse
import json
import threading
import time
import urllib.error
import urllib.request


def image_request(
    url: str, model: str, size: int = 8, token: str | None = None, prompt: str = "load"
) -> urllib.request.Request:
    """OpenAI's images route, base64 JSON back."""
    body = json.dumps({"model": model, "prompt": prompt, "size": f"{size}x{size}"}).encode()
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return urllib.request.Request(url.rstrip("/") + "/v1/images/generations", body, headers)


def call(request: urllib.request.Request, timeout: float = 600) -> dict[str, object]:
    """One request, waited for: what a test looks at in its answer."""
    sent = time.time()
    status, details, retry_after = 0, "", ""
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            first_byte = time.time()
            response.read()
            status = response.status
    except urllib.error.HTTPError as error:
        first_byte = time.time()
        try:
            details = json.loads(error.read() or b"{}").get("details", "")
        except ValueError:
            details = "(not JSON)"
        status, retry_after = error.code, error.headers.get("Retry-After", "")
    return {
        "status": status,
        "details": details,
        "retry_after": retry_after,
        "sent": sent,
        "first_byte": first_byte,
        "answered": time.time(),
    }


def at_once(url: str, requests: dict[str, dict[str, object]]) -> dict[str, object]:
    results: dict[str, object] = {}

    def one(name: str, spec: dict[str, object]) -> None:
        prompt = "x" * int(str(spec.get("prompt_bytes", 0))) or "at once"
        token = spec.get("token")
        size = int(str(spec.get("size", 8)))
        request = image_request(url, str(spec["model"]), size, str(token) if token else None,
                                prompt)  # fmt: skip
        results[name] = call(request, float(str(spec.get("timeout", 600))))

    threads = [threading.Thread(target=one, args=item) for item in requests.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def load(
    url: str, model: str, concurrency: int, seconds: float, size: int, token: str | None
) -> dict[str, object]:
    latencies: list[float] = []
    failures: dict[str, int] = {}
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client() -> None:
        while time.monotonic() < stop_at:
            request = image_request(url, model, size, token)
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
    modes = parser.add_subparsers(dest="mode", required=True)
    closed = modes.add_parser("load", help="closed-loop load, printing a line per URL and round")
    closed.add_argument("model")
    closed.add_argument("concurrency", type=int)
    closed.add_argument("seconds", type=float)
    closed.add_argument("urls", nargs="+")
    closed.add_argument("--rounds", type=int, default=1)
    closed.add_argument("--size", type=int, default=8, help="image side in pixels")
    closed.add_argument("--token", help="bearer token, for a gateway with auth on")
    burst = modes.add_parser("at-once", help="named requests sent at once, one line of results")
    burst.add_argument("url")
    burst.add_argument("requests", type=json.loads, help="JSON: {name: {model, token, ...}}")
    args = parser.parse_args()
    if args.mode == "at-once":
        print(json.dumps(at_once(args.url, args.requests)), flush=True)
        return
    for _ in range(args.rounds):
        for url in args.urls:
            result = load(url, args.model, args.concurrency, args.seconds, args.size, args.token)
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
