"""Benchmark: how full the server's batches are under closed-loop load, this code against another.

Two real `tti-server` processes serve the offline tiny SDXL model on the CPU with
`--max-batch-size 8`: one runs this checkout's server code, the other a reference's,
chosen by pointing `PYTHONPATH` at each one's `common/` and `server/`. The reference is
the revision `--reference-rev` of this repository (default: `main`), exported (`git
archive`) to the run's temporary folder and removed with it, or the existing checkout
`--reference` names. Both stay up for the whole run (an idle server costs no CPU) and the
rounds alternate between them, so drift in background load hits both alike. Per round and
server:

* p50 of one client's requests, one after another (caikit JSON through HTTP);
* `--clients` closed-loop clients (each sends its next request when answered):
  images/s, and the mean images per pipeline call the server ran, from its /metrics
  (`tti_images_generated_total` over `tti_batches_total{outcome="ok"}`).

It prints both servers side by side and the ratios; the targets (issue 22) are a mean
batch >= 7 of 8 at 8 clients, and one client's p50 at most 1.05x the reference's.

    .venv/bin/python tests/benchmarks/bench_batching.py [--reference-rev main | --reference DIR]
        [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serving import REPO, ServerProcess, closed_loop, launch_server, one_client_times

from tti_server.tools.tiny_model import write_tiny_model

MAX_BATCH = 8
MEAN_BATCH_TARGET = 7.0
LATENCY_TARGET = 1.05


@dataclass
class Side:
    """One server under test and what was measured on it, round by round."""

    name: str
    root: Path
    server: ServerProcess | None = None
    latencies: list[float] = field(default_factory=list)
    images_per_s: list[float] = field(default_factory=list)
    mean_batches: list[float] = field(default_factory=list)


def body(size: int, seed: int, image_format: str) -> dict[str, Any]:
    parameters = {"height": size, "width": size, "seed": seed, "image_format": image_format}
    return {"inputs": "a lighthouse", "parameters": parameters}


def start(side: Side, model_dir: Path, log_dir: Path, args: argparse.Namespace) -> ServerProcess:
    flags = ["--model", "sdxl-turbo", "--model-path", str(model_dir), "--workers", "1"]
    flags += ["--max-batch-size", str(MAX_BATCH), "--max-queue", "256", "--grpc-port", "0"]
    if args.batch_wait_ms is not None:
        flags += ["--batch-wait-ms", str(args.batch_wait_ms)]
    env = {"PYTHONPATH": f"{side.root / 'common'}:{side.root / 'server'}"}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    return launch_server(flags, log_dir / side.name, env=env)


def measure_round(side: Side, args: argparse.Namespace) -> None:
    assert side.server is not None
    side.latencies += one_client_times(
        side.server, args.samples, lambda seed: body(args.size, seed, args.format)
    )
    images_per_s, mean_batch = closed_loop(
        side.server,
        args.clients,
        args.per_client,
        warm_up=lambda index: body(args.size, index, args.format),
        request=lambda index, number: body(args.size, 1000 * index + number, args.format),
    )
    side.images_per_s.append(images_per_s)
    side.mean_batches.append(mean_batch)
    p50 = statistics.median(side.latencies[-args.samples :]) * 1000
    print(
        f"  {side.name:10} p50 {p50:7.1f} ms at 1 client; {args.clients} clients: "
        f"{images_per_s:6.1f} images/s, {mean_batch:.2f} images per call",
        flush=True,
    )


def report(reference: Side, candidate: Side, args: argparse.Namespace) -> None:
    print()
    print(f"tiny SDXL on the CPU, {args.size}x{args.size}, 1 step, {args.format}, ", end="")
    print(f"--max-batch-size {MAX_BATCH}, {args.rounds} rounds")
    print(f"{'':12}{'p50 1 client':>14}{f'img/s {args.clients}':>12}{'mean batch':>12}")
    for side in (reference, candidate):
        p50 = statistics.median(side.latencies) * 1000
        rate = statistics.median(side.images_per_s)
        batch = statistics.mean(side.mean_batches)
        print(f"{side.name:12}{p50:>12.1f}ms{rate:>12.1f}{batch:>12.2f}")
    latency_ratio = statistics.median(candidate.latencies) / statistics.median(reference.latencies)
    rate_ratio = statistics.median(candidate.images_per_s) / statistics.median(
        reference.images_per_s
    )
    batch = statistics.mean(candidate.mean_batches)
    verdict = "meets" if latency_ratio <= LATENCY_TARGET else "MISSES"
    print(f"p50 at 1 client, {candidate.name} / {reference.name}: {latency_ratio:.3f} ", end="")
    print(f"({verdict} target <= {LATENCY_TARGET})")
    verdict = "meets" if batch >= MEAN_BATCH_TARGET else "MISSES"
    print(f"mean batch of {candidate.name} at {args.clients} clients: {batch:.2f} ", end="")
    print(f"({verdict} target >= {MEAN_BATCH_TARGET})")
    print(f"images/s at {args.clients} clients, {candidate.name} / {reference.name}: ", end="")
    print(f"{rate_ratio:.2f}")


def git(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True)


def revision_commit(revision: str) -> str | None:
    """The commit `revision` names in this repository, or None."""
    found = git("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}")
    return found.stdout.decode().strip() or None


def export(commit: str, path: Path) -> Path:
    """The files of `commit` written to `path` (git archive): a checkout without a .git."""
    path.mkdir(parents=True)
    archive = git("archive", commit)
    archive.check_returncode()
    subprocess.run(["tar", "-x", "-C", str(path)], input=archive.stdout, check=True)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--reference-rev",
        metavar="REV",
        help="revision of this repository to compare with (default: main), exported to a "
        "temporary folder for the run",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        metavar="DIR",
        help="an existing checkout to compare with, instead",
    )
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds")
    parser.add_argument("--samples", type=int, default=20, help="1-client requests per round")
    parser.add_argument("--clients", type=int, default=8, help="closed-loop clients")
    parser.add_argument("--per-client", type=int, default=12, help="requests per client a round")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--format", default="jpeg", help="image format the requests ask for")
    parser.add_argument(
        "--batch-wait-ms", type=float, help="the servers' batch window (default: their own)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="OMP_NUM_THREADS of the servers (default: torch's own, one per core; on a "
        "shared machine 1 keeps torch's spinning threads from slowing to seconds a call)",
    )
    args = parser.parse_args()
    if args.reference is not None and args.reference_rev is not None:
        parser.error("--reference and --reference-rev: give one of them")
    if args.reference is not None and not (args.reference / "server" / "tti_server").is_dir():
        parser.error(f"--reference: {args.reference} holds no server/tti_server")
    revision = args.reference_rev or "main"
    commit = revision_commit(revision) if args.reference is None else None
    if args.reference is None and commit is None:
        parser.error(f"--reference-rev: {revision!r} is no revision of {REPO}")

    with tempfile.TemporaryDirectory(prefix="bench-batching-") as folder:
        scratch = Path(folder)
        if commit is None:
            root = args.reference.resolve()
        else:
            root = export(commit, scratch / "reference")
            print(f"reference: {revision} ({commit[:12]}), exported to {root}", flush=True)
        compare(Side("reference", root), Side("this code", REPO), scratch, args)


def compare(reference: Side, candidate: Side, scratch: Path, args: argparse.Namespace) -> None:
    """Both servers up side by side, the rounds alternating between them; then the report."""
    model_dir, log_dir = scratch / "tiny", scratch / "logs"
    write_tiny_model(model_dir, "sdxl")
    try:
        for side in (reference, candidate):
            side.server = start(side, model_dir, log_dir, args)
            print(f"{side.name}: {side.root} serving at {side.server.url}", flush=True)
        for number in range(1, args.rounds + 1):
            print(f"round {number} of {args.rounds}", flush=True)
            order = (reference, candidate) if number % 2 else (candidate, reference)
            for side in order:
                measure_round(side, args)
    finally:
        for side in (reference, candidate):
            if side.server is not None:
                side.server.stop()
    report(reference, candidate, args)


if __name__ == "__main__":
    main()
