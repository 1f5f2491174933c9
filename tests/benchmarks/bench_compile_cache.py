"""Benchmark: compiling the SDXL UNet and VAE decoder ahead of serving, then again from
torch's cache artefacts (issue 22 item 2; a spike: the server does not use it yet).

Two fresh processes, one after the other, each standing for a pod that starts: each
has its own empty Inductor cache directory (so nothing on local disk helps the second),
loads the tiny SDXL model on the CPU, wraps the UNet and `vae.decode` in
`torch.compile` with static shapes, and runs the pipeline once per batch size up to
`--max-batch` (so each compiles before a request could come). The first process then
saves what it compiled with `torch.compiler.save_cache_artifacts()`; the second loads
those bytes with `torch.compiler.load_cache_artifacts()` before compiling. It prints
both compile times (the warm-up calls, less the same calls made eagerly), the
artefacts' size and the ratio; the target is a second start <= 20 % of the first
(the first run, in docs/benchmarks.md, gave 0.52 on the CPU).

    .venv/bin/python tests/benchmarks/bench_compile_cache.py [--max-batch 2] [--size 64]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TARGET = 0.20


def start(args: argparse.Namespace) -> None:
    """The `start` sub-command: one pod's start; prints its figures as one JSON line."""
    import torch

    from tti_server.backends.diffusion import load_pipeline

    artefacts = Path(args.artefacts)
    loaded = None
    if artefacts.is_file():
        loaded = torch.compiler.load_cache_artifacts(artefacts.read_bytes())
    pipeline = load_pipeline(args.model_dir, "cpu").pipeline

    def warm_up() -> float:
        started = time.perf_counter()
        with torch.inference_mode():
            for batch in range(1, args.max_batch + 1):
                pipeline(
                    prompt=["a lighthouse"] * batch,
                    height=args.size,
                    width=args.size,
                    num_inference_steps=1,
                    guidance_scale=0.0,
                )
        return time.perf_counter() - started

    eager_s = warm_up()
    pipeline.unet = torch.compile(pipeline.unet, dynamic=False)
    pipeline.vae.decode = torch.compile(pipeline.vae.decode, dynamic=False)
    compiled_s = warm_up()
    again_s = warm_up()  # compiled and warm: what a request then costs
    saved = torch.compiler.save_cache_artifacts()
    if saved is not None and not artefacts.is_file():
        artefacts.write_bytes(saved[0])
    figures = {
        "compile_s": compiled_s - eager_s,
        "eager_s": eager_s,
        "compiled_warm_s": again_s,
        "artefact_bytes": artefacts.stat().st_size if artefacts.is_file() else 0,
        "loaded": str(loaded) if loaded is not None else None,
    }
    print("FIGURES " + json.dumps(figures), flush=True)


def one_start(model_dir: Path, artefacts: Path, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="inductor-") as cache:
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": cache, "TRITON_CACHE_DIR": cache}
        command = [sys.executable, __file__, "start", "--model-dir", str(model_dir)]
        command += ["--artefacts", str(artefacts), "--max-batch", str(args.max_batch)]
        command += ["--size", str(args.size)]
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
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
    start_parser.add_argument("--artefacts", required=True)
    for each in (parser, start_parser):
        each.add_argument("--max-batch", type=int, default=2, help="compile batches 1..this")
        each.add_argument("--size", type=int, default=64, help="image side in pixels")
    args = parser.parse_args()
    if args.command == "start":
        start(args)
        return

    from tti_server.tools.tiny_model import write_tiny_model

    with tempfile.TemporaryDirectory(prefix="bench-compile-cache-") as scratch:
        model_dir, artefacts = Path(scratch) / "tiny", Path(scratch) / "artefacts.bin"
        write_tiny_model(model_dir, "sdxl")
        first = one_start(model_dir, artefacts, args)
        print(f"first start: compiled in {first['compile_s']:.1f} s", flush=True)
        second = one_start(model_dir, artefacts, args)
        print(f"second start, artefacts loaded: {second['compile_s']:.1f} s", flush=True)
    ratio = second["compile_s"] / first["compile_s"]
    print(f"batches 1-{args.max_batch}, {args.size}x{args.size}, tiny SDXL on the CPU")
    print(f"artefacts: {first['artefact_bytes'] / 1e6:.2f} MB; loaded: {second['loaded']}")
    print(
        f"eager warm-up {first['eager_s']:.2f} s; compiled, warm {first['compiled_warm_s']:.2f} s"
    )
    verdict = "meets" if ratio <= TARGET else "MISSES"
    print(f"second / first compile: {ratio:.2f} ({verdict} target <= {TARGET})")


if __name__ == "__main__":
    main()
