"""Cold start of the full-size SDXL-Turbo from zero through the gateway, with and without the
model cache (issue 20), against the same server loading the same weights from local disk.

In one run:

1. the published SDXL-Turbo architecture with random weights (UNet 2.6 B parameters, both
   text encoders, the VAE), fp16 on disk under the plain file names (~7 GB), made by
   `bench_sdxl_gpu.build_model` (or reused with `--keep DIR`);
2. the baseline: `tti-server` as a process on this machine, outside Kubernetes, from its start
   to the first byte of its first 64x64 one-step image, loading that directory;
3. on the real node (the local cluster, started if it is not up), the chart with the gateway
   and `modelCache.hubEndpoint` pointing at a `support.hf_endpoint` hub on this machine that
   serves the directory and counts the bytes it sends:
   a. the cache off (`spec.cache.enabled: false`, the pod downloads into its own emptyDir,
      `HF_ENDPOINT` in its env): a model at zero, one request through the gateway, the
      breakdown and the hub's bytes, and what its emptyDir holds on the node; then deleted;
   b. the cache on: the fetch Job (its time and bytes, not part of the cold start), then the
      model at zero, one request through the gateway, the breakdown and the hub's bytes
      during the wake (the target: 0); then back to zero and a second wake (0 again); what
      the claim holds on the node; then the model and its claim deleted.

It prints the breakdowns side by side, the ratio cache cold start / local load (target
<= 1.5), the hub's bytes and the load average. The server on a CPU loads the weights in fp32
(`load_pipeline` has no other CPU dtype): ~14 GB of memory, so the model pod asks for 15 GiB
and may use 22 GiB of the node's 24 GB. `--smoke` runs the same steps with the tiny model.

    flock /tmp/tti-cluster.lock .venv/bin/python tests/benchmarks/bench_cold_start.py \\
        [--keep DIR] [--smoke] [--no-cluster] [--json FILE]

The disk must hold the model three times over at the worst moment (the directory, and a
copy in the pod's emptyDir or the cache's claim): every step first checks that 9 GB are
free and stops otherwise. The model directory is deleted at the end unless `--keep` names it.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCHMARKS.parents[1] / "tests"), str(BENCHMARKS)]

import bench_scaling  # noqa: E402
import torch  # noqa: E402
from bench_scaling import LOADED, local_cluster, say  # noqa: E402
from bench_sdxl_gpu import FULL, SMOKE, Scale, build_model  # noqa: E402
from support import loadgen  # noqa: E402
from support.cluster import Cluster  # noqa: E402
from support.hf_endpoint import HubEndpoint  # noqa: E402
from support.realpods import Release, install, wait_for  # noqa: E402
from support.server import launch_server, wait_until_ready  # noqa: E402

HUB_REPO = "bench/sdxl-turbo-random"
SIZE = 64
MIN_FREE_GB = 9.0
GB = 1e9
#: The full architecture, built and served on the CPU at 64x64.
FULL_ON_CPU = dataclasses.replace(FULL, device="cpu", size=SIZE)
#: At zero until a request wakes it, and kept up long after, until looked at.
ASLEEP = {"minReplicas": 0, "maxReplicas": 1, "targetInFlight": 1, "scaleDownDelaySeconds": 3600}


@dataclasses.dataclass(frozen=True)
class Run:
    """What differs between the full-size run and the smoke run."""

    scale: Scale
    resources: dict[str, dict[str, str]]
    timeout_s: float  # for one cold start, the fetch, and the local load


FULL_RUN = Run(
    FULL_ON_CPU,
    # fp32 weights (~14 GB) with room for the load's peak (19 GB resident locally, the fp16
    # files mapped while they are converted); one of the node's two cores.
    {"requests": {"cpu": "1", "memory": "15Gi"}, "limits": {"memory": "22Gi"}},
    1800,
)
SMOKE_RUN = Run(SMOKE, {"requests": {"cpu": "500m", "memory": "1Gi"}}, 300)


# --- the disk ----------------------------------------------------------------------------


def free_gb() -> float:
    return shutil.disk_usage("/").free / GB


def check_disk(step: str) -> float:
    free = free_gb()
    say(f"disk: {free:.1f} GB free before {step}")
    if free < MIN_FREE_GB:
        raise SystemExit(
            f"stopping before {step}: {free:.1f} GB free on /, under the {MIN_FREE_GB:g} GB "
            "this step needs (the model is ~7 GB, and the pod or the cache copies it again)"
        )
    return free


# --- 1. the model ------------------------------------------------------------------------


def make_model(scale: Scale, directory: Path) -> None:
    if (directory / "model_index.json").is_file():
        say(f"reusing the model in {directory}")
        return
    check_disk("making the model")
    build_model(scale, directory, dtype=torch.float16)


def size_gb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / GB


# --- 2. the same server outside Kubernetes -----------------------------------------------


def local_load(model_dir: Path, log_dir: Path, timeout_s: float) -> tuple[dict[str, float], float]:
    """`tti-server` loading `model_dir` from local disk: from its start to the first byte of its
    first image, in the rows of the cold starts' breakdown; and its peak memory in GB."""
    check_disk("the local load")
    args = ["--model", "sdxl-turbo", "--model-path", str(model_dir), "--device", "cpu"]
    started = time.time()
    server = launch_server(args, log_dir, env={"HF_HUB_OFFLINE": "1"}, wait_ready=False)
    try:
        wait_until_ready(server, timeout_s)
        ready = time.time()
        request = loadgen.image_request(server.url, "sdxl-turbo", SIZE, prompt="cold")
        client = loadgen.call(request, timeout_s)
        peak_gb = peak_memory_gb(server.process.pid)
    finally:
        server.stop()
    if client["status"] != 200:
        raise SystemExit(f"the local server answered {client['status']}: {client['details']}")
    found = LOADED.search(server.output())
    if found is None:
        raise SystemExit(f"the local server never said how long it loaded:\n{server.output()}")
    load_s, warm_s = map(float, found.groups())
    first_byte = float(str(client["first_byte"]))
    parts = dict.fromkeys(ROWS, 0.0)
    parts.update(
        {
            "total": first_byte - started,
            "server start (imports)": ready - started - load_s - warm_s,
            "model load": load_s,
            "warm-up": warm_s,
            "forward (Ready -> answer)": first_byte - ready,
        }
    )
    return parts, peak_gb


def peak_memory_gb(pid: int) -> float:
    """The process's peak resident memory (VmHWM), in GB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / GB
    return float("nan")


# --- 3. on the real node -----------------------------------------------------------------


#: The rows of bench_scaling's breakdown, and the one added here.
ROWS = (
    "total",
    "wake (request -> pod created)",
    "schedule",
    "container start",
    "server start (imports)",
    "model load",
    "warm-up",
    "readiness seen (probe)",
    "forward (Ready -> answer)",
    "  of it, the hub sending",
)


class HubWatch:
    """The hub's bytes for the model, sampled while a wake runs: how many, and for how long."""

    def __init__(self, hub: HubEndpoint) -> None:
        self.hub = hub
        self.start = hub.total_bytes_sent(HUB_REPO)
        self.bytes = 0
        self.first: float | None = None
        self.last: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.25):
            sent = self.hub.total_bytes_sent(HUB_REPO) - self.start
            if sent != self.bytes:
                now = time.time()
                self.first = self.first or now
                self.last, self.bytes = now, sent

    @property
    def busy_s(self) -> float:
        return 0.0 if self.first is None or self.last is None else self.last - self.first

    def __enter__(self) -> HubWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.bytes = self.hub.total_bytes_sent(HUB_REPO) - self.start


@dataclasses.dataclass(frozen=True)
class Wake:
    parts: dict[str, float]  # the breakdown up to the first byte of the answer
    hub_bytes: int  # what the hub sent meanwhile
    pod_uid: str


def timed_wake(release: Release, hub: HubEndpoint, name: str, timeout_s: float) -> Wake:
    """One request through the gateway to `name` at zero."""
    wait_for(f"{name} at zero", lambda: bench_scaling.zero(release, name), timeout_s=300)
    say(f"{name}: at zero; one {SIZE}x{SIZE} request through the gateway")
    with HubWatch(hub) as watch:
        pod, client = bench_scaling.wake(release, name, SIZE, timeout_s)
    parts = bench_scaling.breakdown(release, pod, {**client, "answered": client["first_byte"]})
    parts["  of it, the hub sending"] = watch.busy_s
    say(f"{name}: first byte after {parts['total']:.1f} s; the hub sent {watch.bytes:,} bytes")
    return Wake(parts, watch.bytes, pod["metadata"]["uid"])


def back_to_zero(release: Release, name: str) -> None:
    """Let the autoscaler take `name` to zero, then keep the next wake's pod up again."""
    scale_down_delay(release, name, 3)
    wait_for(f"{name} at zero", lambda: bench_scaling.zero(release, name), timeout_s=300)
    scale_down_delay(release, name, ASLEEP["scaleDownDelaySeconds"])


def scale_down_delay(release: Release, name: str, seconds: int) -> None:
    patch = json.dumps({"spec": {"autoscaling": {"scaleDownDelaySeconds": seconds}}})
    release.kubectl("patch", "ttimodel", name, "-n", release.models, "--type=merge", "-p", patch)


def condition(resource: Any, kind: str) -> dict[str, Any]:
    conditions = resource.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == kind), {})


def fetch(release: Release, hub: HubEndpoint, name: str, timeout_s: float) -> tuple[float, int]:
    """Wait for `name`'s weights in the cache: seconds from now, and the hub's bytes."""
    before, started = hub.total_bytes_sent(HUB_REPO), time.time()

    def cached() -> bool:
        weights = condition(release.model(name), "WeightsReady")
        if weights.get("reason") == "DownloadFailed":
            raise SystemExit(f"{name}: the fetch failed: {weights.get('message')}")
        return weights.get("reason") == "Cached"

    wait_for(f"{name}'s weights cached", cached, timeout_s=timeout_s)
    return time.time() - started, hub.total_bytes_sent(HUB_REPO) - before


def delete_model(release: Release, name: str, *, with_claims: bool = False) -> None:
    """Delete `name` (and the cache's claims), and wait until the node has let their disk go."""
    release.kubectl("delete", "ttimodel", name, "-n", release.models, "--wait=true")
    selector = f"tti.dev/model={name}"
    wait_for(
        f"{name}'s pods gone",
        lambda: not release.get("pods", "-n", release.models, "-l", selector)["items"],
        timeout_s=300,
    )
    if with_claims:
        release.kubectl("delete", "pvc", "-n", release.models, "-l", "tti.dev/weights")

        def volumes_gone() -> bool:
            claims = [v["spec"].get("claimRef", {}) for v in release.get("pv")["items"]]
            return all(claim.get("namespace") != release.models for claim in claims)

        wait_for("the cache's volumes deleted", volumes_gone, timeout_s=300)


def stored_gb(directory: Path) -> float:
    """What the files under `directory` hold (0 once it is gone), in GB.

    Measured where the node keeps it rather than as the disk's free space, which the other
    sessions sharing this machine move by gigabytes at a time."""
    if not directory.exists():
        return 0.0
    return sum(p.lstat().st_size for p in directory.rglob("*") if p.is_file()) / GB


def empty_dir(cluster: Cluster, pod_uid: str) -> Path:
    """The pod's `cache` emptyDir (where a pod without the model cache downloads) on the node."""
    pod_dir = cluster.paths.node.kubelet_root / "pods" / pod_uid
    return pod_dir / "volumes" / "kubernetes.io~empty-dir" / "cache"


@dataclasses.dataclass
class NodeFigures:
    breakdowns: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)
    hub_bytes: dict[str, int] = dataclasses.field(default_factory=dict)
    fetch_s: float = 0.0
    stored_gb: dict[str, float] = dataclasses.field(default_factory=dict)

    def add(self, what: str, wake: Wake) -> None:
        self.breakdowns[what], self.hub_bytes[f"the wake, {what}"] = wake.parts, wake.hub_bytes


def on_the_node(cluster: Cluster, run: Run, model_dir: Path, figures: NodeFigures) -> None:
    hub = HubEndpoint(host=cluster.host_address)
    say(f"hashing {model_dir} for the hub")
    hub.add_repo(HUB_REPO, model_dir)
    with hub:
        values = (
            f"modelCache.hubEndpoint={hub.url}",
            # The gateway holds the request for as long as a cold start may take.
            f"gateway.holdTimeoutSeconds={int(run.timeout_s)}",
        )
        with install(cluster, "cold", *values) as release:
            spec = {
                "model": "sdxl-turbo",
                "replicas": 0,
                "autoscaling": ASLEEP,
                "resources": run.resources,
                "source": {"huggingFace": {"repo": HUB_REPO}},
            }
            cache_off(cluster, release, hub, run, spec, figures)
            cache_on(cluster, release, hub, run, spec, figures)


def cache_off(
    cluster: Cluster,
    release: Release,
    hub: HubEndpoint,
    run: Run,
    spec: dict[str, Any],
    figures: NodeFigures,
) -> None:
    """Today's behaviour without the cache: the woken pod downloads into its own emptyDir."""
    name, label = "nocache", "cache off"
    check_disk("(a) the cache off")
    env = [{"name": "HF_ENDPOINT", "value": hub.url}]
    release.apply_model(name, cache={"enabled": False}, env=env, **spec)
    wake = timed_wake(release, hub, name, run.timeout_s)
    figures.add(label, wake)
    scratch = empty_dir(cluster, wake.pod_uid)
    figures.stored_gb["the cache-off pod's emptyDir"] = stored_gb(scratch)
    delete_model(release, name)
    figures.stored_gb["that emptyDir once the model was deleted"] = stored_gb(scratch)


def cache_on(
    cluster: Cluster,
    release: Release,
    hub: HubEndpoint,
    run: Run,
    spec: dict[str, Any],
    figures: NodeFigures,
) -> None:
    """The model cache: one fetch by a Job, then wakes that ask the hub for nothing."""
    name, label = "cached", "cache on"
    check_disk("(b) the cache on")
    release.apply_model(name, **spec)
    say(f"{name}: waiting for the fetch Job to fill the cache")
    figures.fetch_s, figures.hub_bytes["the fetch Job"] = fetch(release, hub, name, run.timeout_s)
    say(f"{name}: cached in {figures.fetch_s:.1f} s, {figures.hub_bytes['the fetch Job']:,} bytes")
    for what in (label, f"{label}, second wake"):
        if what != label:
            back_to_zero(release, name)
        figures.add(what, timed_wake(release, hub, name, run.timeout_s))
    volumes = cluster.paths.node.node_volumes
    figures.stored_gb["the cache's claims"] = stored_gb(volumes)
    delete_model(release, name, with_claims=True)
    figures.stored_gb["the claims once deleted"] = stored_gb(volumes)


# --- 4. the report -----------------------------------------------------------------------


def report(
    results: dict[str, dict[str, float]],
    figures: NodeFigures,
    peak_gb: float,
    model_gb: float,
    load: tuple[str, str],
) -> dict[str, Any]:
    bench_scaling.print_cold_starts(results)
    summary: dict[str, Any] = {
        "model_gb_on_disk": round(model_gb, 2),
        "weights": "fp16 on disk, loaded as fp32 (the server's CPU dtype)",
        "local_server_peak_memory_gb": round(peak_gb, 2),
        "load_average": {"before": load[0], "after": load[1]},
        "seconds": results,
        "hub_bytes": figures.hub_bytes,
        "fetch_job_s": round(figures.fetch_s, 1),
        "stored_gb": {k: round(v, 2) for k, v in figures.stored_gb.items()},
    }
    print(f"weights: {model_gb:.2f} GB in fp16 on disk, loaded as fp32 by the server on a CPU")
    print(f"the local server's peak memory: {peak_gb:.1f} GB")
    if "cache on" in results:
        summary["ratio_cache_over_local"] = ratios = {}
        for local in (name for name in results if name.startswith("local disk")):
            ratio = ratios[local] = round(results["cache on"]["total"] / results[local]["total"], 2)
            verdict = "met" if ratio <= 1.5 else "NOT met"
            print(f"cold start with the cache / {local}: {ratio:.2f} (target <= 1.5: {verdict})")
        print(f"the fetch Job: {figures.fetch_s:.1f} s (not part of the cold start)")
    for what, sent in figures.hub_bytes.items():
        print(f"bytes the hub sent, {what}: {sent:,}")
    woken = [sent for what, sent in figures.hub_bytes.items() if "the wake, cache on" in what]
    if woken:
        verdict = "met" if not any(woken) else "NOT met"
        print(f"bytes the hub sent to the cache's wakes: {sum(woken):,} (target 0: {verdict})")
    for where, stored in figures.stored_gb.items():
        print(f"stored in {where}: {stored:.2f} GB")
    print(f"load average: {load[0]} before, {load[1]} after")
    return summary


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--smoke", action="store_true", help="the tiny model, same steps")
    parser.add_argument("--keep", type=Path, help="make the model here (or reuse it) and keep it")
    parser.add_argument("--no-cluster", action="store_true", help="the model and baseline only")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    run = SMOKE_RUN if args.smoke else FULL_RUN
    before = load_average()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    say(f"{now}; load average before: {before}; {run.scale.name} model")
    scratch = Path(tempfile.mkdtemp(prefix="bench-cold-start-"))
    model_dir = args.keep or scratch / "model"
    try:
        make_model(run.scale, model_dir)
        model_gb = size_gb(model_dir)
        say(f"the model: {model_gb:.2f} GB in {model_dir}")
        figures = NodeFigures()
        with contextlib.ExitStack() as stack:
            cluster = None if args.no_cluster else stack.enter_context(local_cluster())
            say("the same server outside Kubernetes, loading from local disk")
            local, peak_gb = local_load(model_dir, scratch / "logs", run.timeout_s)
            say(f"local: first byte after {local['total']:.1f} s; peak memory {peak_gb:.1f} GB")
            results = {"local disk": local}
            if cluster is not None:
                on_the_node(cluster, run, model_dir, figures)
                results.update(figures.breakdowns)
                # Once more: the same load varies from run to run by more than the gaps measured.
                say("the same server outside Kubernetes again")
                results["local disk, again"], peak_again = local_load(
                    model_dir, scratch / "logs", run.timeout_s
                )
                peak_gb = max(peak_gb, peak_again)
        summary = report(results, figures, peak_gb, model_gb, (before, load_average()))
        summary["date"] = now
        if args.json:
            args.json.write_text(json.dumps(summary, indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
