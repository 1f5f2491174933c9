"""Benchmark: the server's compilation ahead of serving, first without and then with the
compile cache (issue 22 item 2: the second start's compile <= 20 % of the first's).

Two fresh processes, one after the other, each standing for a pod that starts with the
same `--compile-cache-dir` (the model cache's artefacts directory): each loads the tiny
SDXL model on the CPU and runs the server's own `compile_ahead` (`tti_server.backends.
compiled`), which compiles the UNet and `vae.decode` for batch sizes 1..`--max-batch` at
`--size`, with Inductor's and Triton's caches and the cache-artefact blob in the keyed
directory. The first finds it empty; the second finds what the first left. Each prints
`compile_ahead`'s own figures (the time its log line gives, and the FX-graph cache hits);
the ratio of the two times is the figure of the issue.

    .venv/bin/python tests/benchmarks/bench_compile_cache.py [--max-batch 2] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

TARGET = 0.20


def start(args: argparse.Namespace) -> None:
    """The `start` sub-command: one pod's start; prints its figures as one JSON line."""
    import torch

    from tti_server.backends import compiled
    from tti_server.backends.diffusion import load_pipeline
    from tti_server.backends.loading import compile_plan
    from tti_server.settings import Settings

    settings = Settings(
        model="sdxl-turbo",
        model_path=args.model_dir,
        device="cpu",
        optimisation="compile",
        compile_cache_dir=args.cache_root,
        max_batch_size=args.max_batch,
        default_size=args.size,
    )
    backend = load_pipeline(args.model_dir, "cpu", model=settings.catalogue_entry)
    compiled.raise_recompile_limit(settings.max_batch_size)
    plan = compile_plan(settings)
    report = compiled.compile_ahead(backend, plan)
    artefacts = report.directory / compiled.ARTIFACTS
    figures = {
        "line": report.line(plan),
        "compile_s": report.seconds,
        "hits": report.cache_hits,
        "graphs": report.graphs,
        "artefact_bytes": artefacts.stat().st_size if artefacts.is_file() else 0,
        "torch": torch.__version__,
    }
    print("FIGURES " + json.dumps(figures), flush=True)


def one_start(model_dir: Path, cache_root: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "start", "--model-dir", str(model_dir)]
    command += ["--cache-root", str(cache_root), "--max-batch", str(args.max_batch)]
    command += ["--size", str(args.size)]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    lines = [line for line in result.stdout.splitlines() if line.startswith("FIGURES ")]
    if result.returncode or not lines:
        raise RuntimeError(f"the start failed ({result.returncode}):\n{result.stderr[-3000:]}")
    figures: dict[str, Any] = json.loads(lines[-1].removeprefix("FIGURES "))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    start_parser = commands.add_parser("start", help="(internal) one pod's start")
    start_parser.add_argument("--model-dir", required=True)
    start_parser.add_argument("--cache-root", required=True)
    for each in (parser, start_parser):
        each.add_argument("--max-batch", type=int, default=2, help="compile batches 1..this")
        each.add_argument("--size", type=int, default=64, help="image side in pixels")
    args = parser.parse_args()
    if args.command == "start":
        start(args)
        return

    from tti_server.tools.tiny_model import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-compile-cache-") as scratch:
        model_dir, cache_root = Path(scratch) / "tiny", Path(scratch) / "compile"
        write_tiny_model(model_dir, "sdxl")
        first = one_start(model_dir, cache_root, args)
        print(f"first start:  {first['line']}", flush=True)
        second = one_start(model_dir, cache_root, args)
        print(f"second start: {second['line']}", flush=True)
    ratio = second["compile_s"] / first["compile_s"]
    print(f"tiny SDXL on the CPU, torch {first['torch']}")
    print(f"artefacts.bin: {second['artefact_bytes'] / 1e6:.2f} MB")
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(
        f"second / first compile: {second['compile_s']:.1f} / {first['compile_s']:.1f} s = "
        f"{ratio:.3f} ({verdict} target <= {TARGET})"
    )


if __name__ == "__main__":
    main()
