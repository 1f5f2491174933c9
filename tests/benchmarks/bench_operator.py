"""Benchmark: how fast the operator turns many TextToImageModels into Deployments and Ready.

For each count (default 500 and 1000) it starts a fresh operator process serving one fresh
namespace, creates that many stub resources at once (concurrent POSTs), and watches the API
server. It reports:

* seconds until every Deployment exists, and until every resource is Ready
  (resources/s = count / seconds; target >= 50/s at 1000);
* apply-to-Deployment latency p50/p99: from the moment a resource's ADDED event reaches
  the benchmark to the moment its Deployment's does (same watcher, same clock; target
  p50 <= 100 ms);
* the operator's peak RSS (VmHWM; target <= 200 MB at 1000).

"Ready" needs the control plane's own work too (ReplicaSets, Pods, scheduling, kwok);
"Deployment exists" is the operator's part alone. It starts a private test cluster (same
binaries as `make cluster-up`, its own state folder, so other test sessions neither disturb
nor see it) and stops it at the end:

    .venv/bin/python tests/benchmarks/bench_operator.py [--counts 500 1000] [--reuse]
    .venv/bin/python tests/benchmarks/bench_operator.py --counts 100 --rate 5   # no burst

`--rate` creates the resources at a steady rate instead: the apply-to-Deployment latency of
one resource when the operator is not working through a thousand-deep backlog.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import kopf

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from localcluster import launcher, processes  # noqa: E402

NODE_PREFIX = "kwok-bench-cpu-"
PODS_PER_NODE = 250
#: Extra interpreter arguments for the operator (--profile sets cProfile).
PROFILE: list[str] = []
STALL_S = 120.0
SERVICE_CIDR = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "ServiceCIDR",
    "metadata": {"name": "tti-bench"},
    "spec": {"cidrs": ["10.96.0.0/16"]},
}
TARGET_RATE = 50.0
TARGET_P50_MS = 100.0
TARGET_RSS_MB = 200.0


@dataclass
class Run:
    count: int
    rate: float | None = None  # resources created per second; None: all at once
    resource_seen: dict[str, float] = field(default_factory=dict)
    deployment_seen: dict[str, float] = field(default_factory=dict)
    ready_seen: dict[str, float] = field(default_factory=dict)
    started: float = 0.0
    all_deployments: float = 0.0
    all_ready: float = 0.0
    peak_rss_mb: float = 0.0
    operator_cpu_s: float = 0.0
    #: CPU seconds of every process involved during the run, by name.
    cpu_s: dict[str, float] = field(default_factory=dict)
    stalled: bool = False

    def latencies_ms(self) -> list[float]:
        return sorted(
            (self.deployment_seen[n] - self.resource_seen[n]) * 1000
            for n in self.deployment_seen
            if n in self.resource_seen
        )


def progress(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def kubectl(paths: launcher.ClusterPaths, *args: str, input: str | None = None) -> str:
    return launcher.kubectl(paths, *args, input=input).stdout


def bench_nodes(count: int) -> dict[str, Any]:
    """Untainted kwok nodes with room for every stub pod."""
    resources = {"cpu": "1000", "memory": "4Ti", "pods": str(PODS_PER_NODE)}
    labels = {"tti.dev/bench-node": "true"}
    items = [launcher.kwok_node(f"{NODE_PREFIX}{i}", resources, labels) for i in range(count)]
    return {"apiVersion": "v1", "kind": "List", "items": items}


def resource(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "tti.dev/v1alpha1",
        "kind": "TextToImageModel",
        "metadata": {"name": name},
        "spec": {"model": "stub", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}},
    }


def is_ready(obj: dict[str, Any]) -> bool:
    conditions = obj.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(paths: launcher.ClusterPaths, operator: int) -> dict[str, float]:
    """CPU seconds so far of the operator, each control-plane component, and this script
    (its watchers parse every event too): where a resource's cost goes, not only ours."""
    pids = {"operator": operator, **launcher.component_pids(paths)}
    spent = {name: cpu_seconds(pid) for name, pid in pids.items() if processes.is_alive(pid)}
    return spent | {"this benchmark": time.process_time()}


async def api_requests(session: aiohttp.ClientSession, server: str) -> Counter[str]:
    """The API server's own count of the requests it served, by verb and resource."""
    async with session.get(f"{server}/metrics") as response:
        text = await response.text()
    counts: Counter[str] = Counter()
    for line in text.splitlines():
        if line.startswith("apiserver_request_total{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            what = "/".join(filter(None, (labels["resource"], labels.get("subresource"))))
            counts[f"{labels['verb']} {what}"] += int(float(line.rsplit(" ", 1)[1]))
    return counts


def print_requests(requests: Counter[str], count: int) -> None:
    top = ", ".join(f"{what} {n / count:.1f}" for what, n in requests.most_common(10))
    progress(f"API requests per resource (all clients): {top}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def watch(
    session: aiohttp.ClientSession, url: str, on_event: Any, stop: asyncio.Event
) -> None:
    """Follow a watch until `stop`, reconnecting from the last version when the server ends it."""
    version = ""
    while not stop.is_set():
        params = {"watch": "true", "timeoutSeconds": "600"}
        if version:
            params["resourceVersion"] = version
        timeout = aiohttp.ClientTimeout(total=None)
        async with session.get(url, params=params, timeout=timeout) as response:
            response.raise_for_status()
            async for line in response.content:
                event = json.loads(line) if line.strip() else {}
                if event.get("type") == "ERROR":
                    version = ""  # expired: relist through a fresh watch
                    break
                if event:
                    version = event["object"]["metadata"]["resourceVersion"]
                    on_event(event)
                if stop.is_set():
                    return


async def run_once(server: str, session: aiohttp.ClientSession, namespace: str, run: Run) -> None:
    base = f"{server}/apis"
    models = f"{base}/tti.dev/v1alpha1/namespaces/{namespace}/texttoimagemodels"
    deployments = f"{base}/apps/v1/namespaces/{namespace}/deployments"
    done = asyncio.Event()
    names = {f"m{i:04d}" for i in range(run.count)}

    def on_model(event: dict[str, Any]) -> None:
        name = event["object"]["metadata"]["name"]
        now = time.monotonic()
        run.resource_seen.setdefault(name, now)
        if is_ready(event["object"]) and name not in run.ready_seen:
            run.ready_seen[name] = now
            if len(run.ready_seen) == run.count:
                run.all_ready = now
                done.set()

    def on_deployment(event: dict[str, Any]) -> None:
        name = event["object"]["metadata"]["name"]
        if name in names and name not in run.deployment_seen:
            run.deployment_seen[name] = time.monotonic()
            if len(run.deployment_seen) == run.count:
                run.all_deployments = run.deployment_seen[name]

    watchers = [
        asyncio.create_task(watch(session, models, on_model, done)),
        asyncio.create_task(watch(session, deployments, on_deployment, done)),
    ]
    await asyncio.sleep(0.5)  # let both watches open before the first create
    semaphore = asyncio.Semaphore(32)

    async def create(name: str) -> None:
        async with semaphore, session.post(models, json=resource(name)) as response:
            if response.status >= 300:
                raise RuntimeError(f"create {name}: {response.status} {await response.text()}")

    run.started = time.monotonic()
    if run.rate is None:
        await asyncio.gather(*(create(n) for n in sorted(names)))
    else:
        creating = []
        for name in sorted(names):
            creating.append(asyncio.create_task(create(name)))
            await asyncio.sleep(1 / run.rate)
        await asyncio.gather(*creating)
    progress(f"{run.count} created in {time.monotonic() - run.started:.1f} s; waiting for Ready")
    reporter = asyncio.create_task(report_progress(run, done))
    finished = asyncio.create_task(done.wait())
    try:
        await asyncio.wait([finished, *watchers], timeout=900, return_when="FIRST_COMPLETED")
        if not done.is_set():
            failed = [t.exception() for t in watchers if t.done() and t.exception()]
            raise RuntimeError(f"gave up: watches ended ({failed}) or 900 s passed")
    finally:
        finished.cancel()
        reporter.cancel()
        for task in watchers:
            task.cancel()
        await asyncio.gather(*watchers, reporter, return_exceptions=True)


async def report_progress(run: Run, done: asyncio.Event) -> None:
    """Every 5 s say where it stands; give up after STALL_S without any progress."""
    last, still = (-1, -1), 0.0
    while not done.is_set():
        await asyncio.sleep(5)
        elapsed = time.monotonic() - run.started
        now = (len(run.deployment_seen), len(run.ready_seen))
        still = still + 5 if now == last else 0.0
        last = now
        progress(
            f"  {elapsed:5.0f} s: {now[0]}/{run.count} Deployments, {now[1]}/{run.count} Ready"
        )
        if still >= STALL_S:
            progress(f"no progress for {STALL_S:.0f} s: giving up on this run")
            run.stalled = True
            done.set()


def start_operator(
    paths: launcher.ClusterPaths, namespace: str, log: Path
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        **paths.env(),
        "TTI_OPERATOR_NAMESPACES": namespace,
        "TTI_OPERATOR_LIVENESS_PORT": "0",
        "TTI_OPERATOR_LOG_FORMAT": "full",
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, *PROFILE, "-m", "tti_operator.cli"],
            env=env,
            stdout=out,
            stderr=out,
            cwd=REPO,
        )


async def warm_up(server: str, session: aiohttp.ClientSession, namespace: str) -> None:
    """One resource end to end, so the measurement starts with the operator watching."""
    models = f"{server}/apis/tti.dev/v1alpha1/namespaces/{namespace}/texttoimagemodels"
    async with session.post(models, json=resource("warm-up")) as response:
        response.raise_for_status()
    deployment = f"{server}/apis/apps/v1/namespaces/{namespace}/deployments/warm-up"
    for _ in range(600):
        async with session.get(deployment) as response:
            if response.status == 200:
                break
        await asyncio.sleep(0.1)
    else:
        raise RuntimeError("the operator never created the warm-up Deployment")
    async with session.delete(f"{models}/warm-up") as response:
        response.raise_for_status()


def delete_namespace(paths: launcher.ClusterPaths, namespace: str, wait: bool) -> None:
    """Delete and wait, so the next run starts on a quiet cluster."""
    progress(f"deleting namespace {namespace}")
    launcher.kubectl(paths, "delete", "namespace", namespace, "--wait=false", check=False)
    if not wait:
        return  # a stalled control plane may never finish it
    launcher.run(
        paths,
        [paths.kubectl, "--kubeconfig", paths.kubeconfig, "wait", "--for=delete",
         f"namespace/{namespace}", "--timeout=600s"],
        check=False,
        timeout=660,
    )  # fmt: skip


async def measure(
    paths: launcher.ClusterPaths, count: int, rate: float | None, log: Path, settle: bool
) -> Run:
    namespace = f"bench-{count}-{int(time.time())}"
    kubectl(paths, "create", "namespace", namespace)
    operator = start_operator(paths, namespace, log)
    run = Run(count, rate)
    try:
        os.environ["KUBECONFIG"] = str(paths.kubeconfig)
        info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
        assert info is not None
        connector = aiohttp.TCPConnector(ssl=info.as_ssl_context(), limit=64)
        async with aiohttp.ClientSession(
            connector=connector, headers=info.as_http_headers()
        ) as session:
            server = info.server.rstrip("/")
            await warm_up(server, session, namespace)
            before = cpu_by_process(paths, operator.pid)
            requests_before = await api_requests(session, server)
            await run_once(server, session, namespace, run)
            requests = await api_requests(session, server) - requests_before
        run.peak_rss_mb = peak_rss_mb(operator.pid)
        after = cpu_by_process(paths, operator.pid)
        run.cpu_s = {name: after[name] - before[name] for name in after if name in before}
        run.operator_cpu_s = run.cpu_s["operator"]
        print_requests(requests, count)
    finally:
        operator.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            operator.wait(timeout=30)
        if operator.poll() is None:
            operator.kill()
    # Waiting for the deletion matters only when another run follows on the same cluster.
    delete_namespace(paths, namespace, wait=settle and not run.stalled)
    return run


def summarise(run: Run) -> dict[str, float]:
    latencies = run.latencies_ms() or [float("nan")]
    nan = float("nan")
    deployments_s = run.all_deployments - run.started if run.all_deployments else nan
    ready_s = run.all_ready - run.started if run.all_ready else nan
    return {
        "count": run.count,
        "deployments_s": deployments_s,
        "deployments_per_s": run.count / deployments_s,
        "ready_s": ready_s,
        "ready_per_s": run.count / ready_s,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))],
        "peak_rss_mb": run.peak_rss_mb,
        "operator_cpu_s": run.operator_cpu_s,
        **{f"cpu:{name}": seconds for name, seconds in run.cpu_s.items()},
        "deployments": len(run.deployment_seen),
        "ready": len(run.ready_seen),
    }


def print_table(rows: list[dict[str, float]]) -> None:
    print(
        f"{'count':>6} {'all Deployments s':>18} {'res/s':>7} {'all Ready s':>12} {'res/s':>7} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'peak RSS MB':>12} {'operator CPU s':>15} "
        f"{'CPU ms/res':>11}"
    )
    for r in rows:
        print(
            f"{r['count']:>6.0f} {r['deployments_s']:>18.1f} {r['deployments_per_s']:>7.1f} "
            f"{r['ready_s']:>12.1f} {r['ready_per_s']:>7.1f} {r['p50_ms']:>7.0f} "
            f"{r['p99_ms']:>7.0f} {r['peak_rss_mb']:>12.0f} {r['operator_cpu_s']:>15.1f} "
            f"{1000 * r['operator_cpu_s'] / r['count']:>11.1f}"
        )
        shares = ", ".join(
            f"{name[4:]} {1000 * seconds / r['count']:.1f}"
            for name, seconds in sorted(r.items(), key=lambda item: -item[1])
            if name.startswith("cpu:")
        )
        print(f"       CPU ms per resource: {shares}")
        if r["ready"] < r["count"]:
            print(
                f"       (stalled: {r['deployments']:.0f} Deployments, {r['ready']:.0f} Ready "
                f"of {r['count']:.0f}; nan = not reached)"
            )
    last = rows[-1]
    print(
        f"\ntargets at {last['count']:.0f}: Ready rate {last['ready_per_s']:.1f}/{TARGET_RATE:.0f} "
        f"res/s (x{last['ready_per_s'] / TARGET_RATE:.2f}), "
        f"Deployment rate x{last['deployments_per_s'] / TARGET_RATE:.2f}, "
        f"p50 {last['p50_ms']:.0f}/{TARGET_P50_MS:.0f} ms "
        f"(x{TARGET_P50_MS / last['p50_ms']:.2f} of budget), "
        f"RSS {last['peak_rss_mb']:.0f}/{TARGET_RSS_MB:.0f} MB"
    )


def with_controller_qps(qps: int) -> None:
    """Raise the controller manager's and scheduler's client rate limits (default 20 and 50
    requests/s), which otherwise bound how fast 1000 ReplicaSets and Pods appear."""
    plain = launcher.kwokctl_configuration

    def tuned(paths: launcher.ClusterPaths, real_node: bool = False) -> dict[str, Any]:
        config = plain(paths, real_node)
        limits = [
            {"key": "kube-api-qps", "value": str(qps)},
            {"key": "kube-api-burst", "value": str(2 * qps)},
        ]
        config["componentsPatches"] = [
            {"name": name, "extraArgs": limits}
            for name in ("kube-controller-manager", "kube-scheduler")
        ]
        return config

    launcher.kwokctl_configuration = tuned


def run_all(
    paths: launcher.ClusterPaths,
    counts: list[int],
    rate: float | None,
    log: Path,
    private: bool,
) -> list[dict[str, float]]:
    crd = REPO / "crds" / "tti.dev_texttoimagemodels.yaml"
    kubectl(paths, "apply", "--server-side", "--force-conflicts", "-f", str(crd))
    kubectl(paths, "wait", "--for=condition=Established", "crd/texttoimagemodels.tti.dev")
    # The API server's default Service range is a /24 (about 250 ClusterIPs): widen it.
    kubectl(paths, "apply", "-f", "-", input=json.dumps(SERVICE_CIDR))
    nodes = -(-max(counts) // PODS_PER_NODE)
    kubectl(paths, "apply", "-f", "-", input=json.dumps(bench_nodes(nodes)))
    progress(f"{nodes} untainted kwok node(s) of {PODS_PER_NODE} pods; operator log: {log}")
    rows = []
    try:
        for index, count in enumerate(counts):
            settle = not private or index < len(counts) - 1
            how = "at once" if rate is None else f"at {rate:g}/s"
            progress(f"--- {count} resources, created {how} ---")
            rows.append(summarise(asyncio.run(measure(paths, count, rate, log, settle))))
            print_table(rows[-1:])  # as soon as it is known; the full table follows
    finally:
        launcher.kubectl(
            paths, "delete", "node", "-l", "tti.dev/bench-node=true", "--wait=false", check=False
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[500, 1000])
    parser.add_argument("--log", type=Path, default=Path("/tmp/bench_operator.log"))
    parser.add_argument(
        "--reuse", action="store_true", help="use the shared test cluster (make cluster-up)"
    )
    parser.add_argument(
        "--controller-qps",
        type=int,
        default=200,
        help="client QPS for the private cluster's controller manager and scheduler (200)",
    )
    parser.add_argument(
        "--rate", type=float, help="create this many resources per second instead of all at once"
    )
    parser.add_argument("--profile", type=Path, help="write the operator's cProfile stats here")
    args = parser.parse_args()
    if args.profile:
        PROFILE[:] = ["-m", "cProfile", "-o", str(args.profile)]
    # Ctrl-C and SIGTERM unwind through the finally blocks: no operator or cluster left behind.
    signal.signal(signal.SIGTERM, launcher.raise_keyboard_interrupt)
    args.log.write_bytes(b"")
    progress(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    if args.reuse:
        paths = launcher.default_paths()
        if not launcher.is_ready(paths):
            print(
                "bench_operator: the test cluster is not up: run `make cluster-up`", file=sys.stderr
            )
            return 2
        rows = run_all(paths, args.counts, args.rate, args.log, private=False)
    else:
        with_controller_qps(args.controller_qps)
        with tempfile.TemporaryDirectory(prefix="tti-bench-cluster-") as state:
            paths = launcher.default_paths(Path(state))
            launcher.up(paths, nodes=1, ephemeral=True, real_node=False)
            try:
                rows = run_all(paths, args.counts, args.rate, args.log, private=True)
            finally:
                launcher.down(paths)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
