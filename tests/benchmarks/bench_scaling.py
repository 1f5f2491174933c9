"""The gateway and scale from zero on the real node, in one run:

1. through the gateway vs straight to the model's Service (stub model, one replica, the same
   client pod alternating the two targets round by round): throughput ratio and p50 added;
2. cold starts from zero, stub and the tiny offline SDXL pipeline: seconds from the first
   request to its answer, with where they went (wake, schedule, container start, server
   start, model load, warm-up, readiness seen, forward).

Needs nothing running: it starts the local cluster with its real node (or uses the one up),
installs the chart in namespaces of its own, and removes them after.

    .venv/bin/python tests/benchmarks/bench_scaling.py [--rounds 3] [--seconds 10] [--concurrency 8]

Kubernetes' own timestamps (pod created, scheduled, started, Ready) have one-second
resolution; the server's log lines and the client's clock are exact.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from support import loadgen  # noqa: E402
from support.cluster import Cluster  # noqa: E402
from support.realpods import (  # noqa: E402
    Release,
    gateway_url,
    install,
    pod_finished,
    start_python_pod,
    wait_for,
    wait_ready,
)

from localcluster import launcher  # noqa: E402

LOADGEN = Path(loadgen.__file__).read_text()
SMALL = {"requests": {"cpu": "100m", "memory": "256Mi"}}
#: Scale to zero a few seconds after the last request, so the benchmark need not wait.
TO_ZERO = {"minReplicas": 0, "maxReplicas": 1, "targetInFlight": 1, "scaleDownDelaySeconds": 3}
LOG_TIME = re.compile(r"^(\S+) ")
LOADED = re.compile(r"loaded in ([\d.]+) s, warmed up in ([\d.]+) s")


def say(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def parse_time(stamp: str) -> float:
    """An RFC 3339 time (Kubernetes' or kubectl's --timestamps, nanoseconds cut) as epoch s."""
    stamp = re.sub(r"(\.\d{6})\d*", r"\1", stamp).replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(stamp).timestamp()


# --- 1. through the gateway vs straight to the Service ------------------------------------


def gateway_vs_service(release: Release, rounds: int, seconds: float, concurrency: int) -> None:
    release.apply_model("direct", resources=SMALL)
    wait_ready(release, "direct")
    service, gateway = release.service_url("direct"), gateway_url(release)
    say(f"{rounds} rounds of {seconds:g} s at concurrency {concurrency}: {service} then {gateway}")
    args = ["load", "direct", str(concurrency), str(seconds), service, gateway]
    args += ["--rounds", str(rounds)]
    admitted_by = service.removeprefix("http://")  # the gateway admits anyone at once
    pod = start_python_pod(release, "gwbench", LOADGEN, *args, admitted_by=admitted_by)
    timeout = rounds * 2 * seconds + 240
    lines = pod_finished(release, pod, timeout_s=timeout).strip().splitlines()
    results = [json.loads(line) for line in lines if line.startswith("{")]
    print("\n round  target    req/s    p50 ms   p99 ms  failures")
    ratios, added = [], []
    for n in range(rounds):
        direct, through = results[2 * n], results[2 * n + 1]
        for label, result in (("service", direct), ("gateway", through)):
            print(
                f" {n + 1:>5}  {label:<8} {result['per_second']:>7}  {result['p50_ms']:>8}"
                f" {result['p99_ms']:>8}  {result['failures'] or '-'}"
            )
        ratios.append(through["per_second"] / direct["per_second"])
        added.append(through["p50_ms"] - direct["p50_ms"])
    print(
        f"\nthroughput gateway/service: median {statistics.median(ratios):.2f}"
        f" (rounds: {', '.join(f'{r:.2f}' for r in ratios)}; target >= 0.85)"
    )
    print(
        f"p50 added by the gateway: median {statistics.median(added):.2f} ms"
        f" (rounds: {', '.join(f'{a:.2f}' for a in added)}; target <= 2 ms)\n"
    )


# --- 2. cold starts ---------------------------------------------------------------------


def cold_start(release: Release, name: str, **spec: Any) -> dict[str, float]:
    release.apply_model(name, **{"autoscaling": TO_ZERO, "resources": SMALL, **spec})
    say(f"{name}: waiting for it to be scaled to zero")
    wait_for(f"{name} at zero", lambda: zero(release, name), timeout_s=600)
    # Keep the pod the request wakes until it has been looked at.
    patch = {"spec": {"autoscaling": {"scaleDownDelaySeconds": 600}}}
    release.kubectl(
        "patch", "ttimodel", name, "-n", release.models, "--type=merge", "-p", json.dumps(patch)
    )
    return breakdown(release, *wake(release, name))


def wake(
    release: Release, name: str, size: int = 8, timeout_s: float = 600
) -> tuple[Any, dict[str, float]]:
    """One request through the gateway to `name` at zero: the pod it woke, and the client's
    times (sent, first byte, answered), from the client pod's clock (the host's clock)."""
    one = json.dumps({"cold": {"model": name, "size": size, "timeout": timeout_s}})
    pod = start_python_pod(release, f"cold-{name}", LOADGEN, "at-once", gateway_url(release), one)
    lines = pod_finished(release, pod, timeout_s=timeout_s + 300).strip().splitlines()
    client = json.loads(lines[-1])["cold"]
    if client["status"] != 200:
        raise SystemExit(f"{name}: the cold request got {client['status']}: {client['details']}")
    [server] = [p for p in release.pods(name) if created(p) >= client["sent"] - 1]
    return server, client


def zero(release: Release, name: str) -> bool:
    spec = release.model(name)["spec"]
    return spec.get("replicas") == 0 and not release.pods(name)


def created(pod: Any) -> float:
    return parse_time(pod["metadata"]["creationTimestamp"])


def breakdown(release: Release, pod: Any, client: dict[str, float]) -> dict[str, float]:
    conditions = {
        c["type"]: parse_time(c["lastTransitionTime"]) for c in pod["status"]["conditions"]
    }
    started = parse_time(pod["status"]["containerStatuses"][0]["state"]["running"]["startedAt"])
    logs = release.kubectl("logs", pod["metadata"]["name"], "-n", release.models, "--timestamps")
    loading = next(line for line in logs.splitlines() if "loading model" in line)
    ready_line = next(line for line in logs.splitlines() if LOADED.search(line))
    load_s, warm_s = map(float, LOADED.search(ready_line).groups())  # type: ignore[union-attr]
    server_start = parse_time(LOG_TIME.match(loading).group(1))  # type: ignore[union-attr]
    ready_logged = parse_time(LOG_TIME.match(ready_line).group(1))  # type: ignore[union-attr]
    return {
        "total": client["answered"] - client["sent"],
        "wake (request -> pod created)": created(pod) - client["sent"],
        "schedule": conditions["PodScheduled"] - created(pod),
        "container start": started - conditions["PodScheduled"],
        "server start (imports)": server_start - started,
        "model load": load_s,
        "warm-up": warm_s,
        "readiness seen (probe)": conditions["Ready"] - ready_logged,
        "forward (Ready -> answer)": client["answered"] - conditions["Ready"],
    }


def print_cold_starts(results: dict[str, dict[str, float]]) -> None:
    names = list(results)
    print("\ncold start from zero, seconds  " + "  ".join(f"{n:>14}" for n in names))
    for part in next(iter(results.values())):
        row = "  ".join(f"{results[n][part]:>14.2f}" for n in names)
        print(f"  {part:<30}{row}")
    print()


@contextlib.contextmanager
def local_cluster() -> Iterator[Cluster]:
    paths = launcher.default_paths()
    subprocess.run(["bash", str(launcher.BUILD_SCRIPT)], check=True)
    with launcher.shared_use(paths):
        launcher.up(paths, ephemeral=True, real_node=True)
        yield Cluster(paths)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two targets")
    parser.add_argument("--seconds", type=float, default=10.0, help="load per target per round")
    parser.add_argument("--concurrency", type=int, default=8, help="clients at once")
    parser.add_argument("--skip-sdxl", action="store_true", help="cold start of the stub only")
    args = parser.parse_args()
    say(f"load average before: {Path('/proc/loadavg').read_text().split()[0]}")
    with (
        local_cluster() as cluster,
        tempfile.TemporaryDirectory() as scratch,
        install(cluster, "bench") as release,
    ):
        Path(scratch).chmod(0o755)  # the model pod runs as uid 10001 and reads the weights
        gateway_vs_service(release, args.rounds, args.seconds, args.concurrency)
        results = {"stub": cold_start(release, "cold-stub")}
        if not args.skip_sdxl:
            weights = Path(scratch) / "tiny-sdxl"
            tti_server = Path(sys.executable).with_name("tti-server")
            subprocess.run([str(tti_server), "make-tiny-model", str(weights)], check=True)
            results["tiny SDXL"] = cold_start(
                release,
                "cold-sdxl",
                model="sdxl-turbo",
                source={"hostPath": {"path": str(weights)}},
                resources={"requests": {"cpu": "500m", "memory": "1Gi"}},
            )
        print_cold_starts(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
