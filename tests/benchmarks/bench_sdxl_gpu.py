"""Benchmark: the full-size SDXL-Turbo architecture served on one GPU, through HTTP.

The real weights cannot be downloaded here, so this builds the published
SDXL-Turbo architecture (UNet 2.6 B parameters, both CLIP text encoders, the SDXL
VAE) with random weights directly on the GPU in fp16 and saves it as a diffusers
directory with the `fp16` variant; the timing is the same as with real weights.
The server then loads it through the normal `load_pipeline` path.

For each variant it starts the real app (create_app + uvicorn, in its own
process; the variant's speed-ups reach `load_pipeline` as `Speedups`), warms it
up at 512x512 for batches of 1, 4 and 8, and reports:

* latency p50 of one 512x512 one-step request, end to end through HTTP
  (caikit JSON, one client, PNG and JPEG; target on one H100 <= 60 ms);
* images/s with 1, 4 and 8 concurrent clients (JPEG), `--max-batch-size 8`, and
  the mean images per pipeline call the server actually ran (target >= 30 images/s
  at batch 8 on one H100).

Variants: `baseline` (the model as published: its VAE config says force_upcast,
so the backend keeps the VAE in bf16, or fp32 on a GPU without bf16), `fast`
(an fp16-safe VAE config as madebyollin's sdxl-vae-fp16-fix ships, channels_last,
fused QKV). The compiled settings (`--optimisation`) are device_run.py's. A time budget
(`--budget-s`, default 420) skips the variants that would not fit. Without CUDA
it says so and exits 0; `--smoke` runs the same code path with the tiny configs
on the CPU at 64x64.

    .venv/bin/python tests/benchmarks/bench_sdxl_gpu.py [--json results.json]
    .venv/bin/python tests/benchmarks/bench_sdxl_gpu.py --smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))

# device_run.py reads engine_counts from here too.
from serving import engine_counts, one_client_times  # noqa: E402
from support.server import ServerExited, ServerProcess, free_port, wait_until_ready  # noqa: E402

from tti_server.tools import tiny_model  # noqa: E402

PATH = "/api/v1/task/text-to-image"
BATCHES = (1, 4, 8)
STARTED = time.monotonic()
#: Past the budget, a variant already running gets this long before its requests time out.
GRACE_S = 90.0
hard_deadline = STARTED + 450 + GRACE_S

# The published SDXL-Turbo configs (stabilityai/sdxl-turbo: unet/, vae/, text_encoder*/).
FULL_UNET: dict[str, Any] = {
    "act_fn": "silu",
    "addition_embed_type": "text_time",
    "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256,
    "attention_head_dim": [5, 10, 20],
    "block_out_channels": [320, 640, 1280],
    "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "in_channels": 4,
    "layers_per_block": 2,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "norm_eps": 1e-05,
    "norm_num_groups": 32,
    "out_channels": 4,
    "projection_class_embeddings_input_dim": 2816,
    "sample_size": 64,
    "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "use_linear_projection": True,
}
FULL_VAE: dict[str, Any] = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
CLIP_VIT_L: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
OPENCLIP_BIGG: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}


@dataclass(frozen=True)
class Scale:
    """What to build and measure: the full model on CUDA, or the tiny one on the CPU."""

    name: str
    configs: tuple[dict[str, Any], dict[str, Any], dict[str, Any], dict[str, Any]]
    device: str
    size: int
    latency_samples: int
    requests_per_client: Callable[[int], int]


FULL = Scale(
    "full", (FULL_UNET, FULL_VAE, CLIP_VIT_L, OPENCLIP_BIGG), "cuda", 512, 30, lambda b: 64 // b
)
SMOKE = Scale(
    "smoke",
    (tiny_model.TINY_UNET, tiny_model.TINY_VAE, tiny_model.TINY_TEXT, tiny_model.TINY_TEXT),
    "cpu",
    64,
    6,
    lambda b: 2,
)


@dataclass(frozen=True)
class Variant:
    name: str
    fp16_safe_vae: bool
    speedups: str
    needs_s: float  # a rough bound on load + warm-up + measurement, to respect the budget


VARIANTS = {
    "baseline": Variant("baseline", False, "", 120),
    "fast": Variant("fast", True, "channels_last,fuse_qkv", 120),
}


@dataclass
class Result:
    variant: str
    speedups: str
    fp16_safe_vae: bool
    latency_p50_ms: dict[str, float] = field(default_factory=dict)
    images_per_s: dict[int, float] = field(default_factory=dict)
    mean_batch: dict[int, float] = field(default_factory=dict)
    warm_up_s: float = 0.0
    error: str | None = None


def time_left() -> float:
    """Seconds a request may still take before the run must end."""
    return max(5.0, hard_deadline - time.monotonic())


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


# --- building the model ------------------------------------------------------------------


def build_model(scale: Scale, directory: Path, dtype: torch.dtype | None = None) -> None:
    """Random weights in the published architecture, saved as a diffusers directory.

    The files hold `dtype` (default: fp16 on CUDA, fp32 on the CPU). Made on CUDA, fp16 is
    saved as the `fp16` variant, as the hub has SDXL-Turbo; made on the CPU, any dtype is
    saved under the plain names, the files a server on the CPU (and the model cache's fetch
    for one) reads. On the CPU the networks are built in `dtype` at once: the full model
    in fp16 needs 7 GB of memory there, not fp32's 14.
    """
    on_cuda = scale.device == "cuda"
    dtype = dtype or (torch.float16 if on_cuda else torch.float32)
    started = time.monotonic()
    torch.manual_seed(0)
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32 if on_cuda else dtype)
    try:
        pipeline = tiny_model.random_sdxl_pipeline(*scale.configs, device=scale.device)
    finally:
        torch.set_default_dtype(default_dtype)
    if pipeline.unet.dtype != dtype:
        pipeline.to(dtype)
    parameters = sum(p.numel() for p in pipeline.unet.parameters())
    seconds = time.monotonic() - started
    log(f"built on {scale.device} in {seconds:.1f} s; UNet {parameters / 1e9:.2f} B parameters")
    started = time.monotonic()
    pipeline.save_pretrained(str(directory), variant="fp16" if on_cuda else None)
    size_gb = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file()) / 1e9
    log(f"saved {size_gb:.2f} GB to {directory} in {time.monotonic() - started:.1f} s")
    del pipeline
    gc.collect()
    if on_cuda:
        torch.cuda.empty_cache()


def with_fp16_safe_vae(model_dir: Path, directory: Path) -> Path:
    """The same model (symlinked) with a VAE config saying fp16 is safe (no fp32 decode).

    That is what serving with madebyollin/sdxl-vae-fp16-fix looks like; with random
    weights the timing is the same, the numerics are not the point here.
    """
    directory.mkdir(parents=True, exist_ok=True)
    for entry in model_dir.iterdir():
        if entry.name != "vae":
            (directory / entry.name).symlink_to(entry.resolve())
    (directory / "vae").mkdir(exist_ok=True)
    for entry in (model_dir / "vae").iterdir():
        if entry.name != "config.json":
            (directory / "vae" / entry.name).symlink_to(entry.resolve())
    config = json.loads((model_dir / "vae" / "config.json").read_text())
    config["force_upcast"] = False
    (directory / "vae" / "config.json").write_text(json.dumps(config, indent=2))
    return directory


# --- the server ---------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """The `serve` sub-command: the real app and engine, with the variant's speed-ups."""
    import uvicorn

    from tti_server.app import create_app
    from tti_server.backends.base import Speedups
    from tti_server.backends.diffusion import load_pipeline
    from tti_server.backends.loading import worker_devices
    from tti_server.settings import Settings

    settings = Settings(
        model="sdxl-turbo",
        model_path=args.model_dir,
        device=args.device,
        max_batch_size=max(BATCHES),
        batch_wait_ms=args.batch_wait_ms,
        max_queue=256,
        request_timeout=900,
        log_level="warning",
    )
    options = Speedups.parse(args.speedups)

    def loader(settings: Settings) -> list[Any]:
        path = settings.resolved_model_path
        return [load_pipeline(path, device, options) for device in worker_devices(settings)]

    def exit_on_failure(message: str) -> None:
        print(f"bench server: error: {message}", file=sys.stderr, flush=True)
        os._exit(1)

    app = create_app(settings, loader=loader, on_load_failure=exit_on_failure)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


def start_server(
    model_dir: Path, variant: Variant, scale: Scale, settings: argparse.Namespace, timeout: float
) -> ServerProcess:
    port = free_port()
    command = [sys.executable, __file__, "serve", "--model-dir", str(model_dir)]
    command += ["--port", str(port), "--device", scale.device, "--speedups", variant.speedups]
    command += ["--batch-wait-ms", str(settings.batch_wait_ms)]
    log_dir = settings.log_dir
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{variant.name}.log"
    with log_path.open("wb") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
    server = ServerProcess(f"http://127.0.0.1:{port}", process, log_path)
    try:
        wait_until_ready(server, timeout)
    except BaseException:
        server.stop()
        raise
    return server


# --- measuring ----------------------------------------------------------------------------


def request_body(scale: Scale, seed: int, image_format: str) -> dict[str, Any]:
    parameters = {"height": scale.size, "width": scale.size, "seed": seed}
    return {
        "inputs": "a photo of a cat",
        "parameters": {**parameters, "image_format": image_format},
    }


def run_clients(server: ServerProcess, scale: Scale, clients: int, per_client: int) -> float:
    """`clients` closed-loop clients, `per_client` requests each; returns the wall time."""
    start = threading.Barrier(clients + 1)

    def one_client(index: int) -> None:
        with httpx.Client(base_url=server.url, timeout=time_left()) as client:
            start.wait()
            for request in range(per_client):
                body = request_body(scale, index * 10_000 + request, "jpeg")
                client.post(PATH, json=body).raise_for_status()

    with ThreadPoolExecutor(clients) as pool:
        done = [pool.submit(one_client, index) for index in range(clients)]
        start.wait()
        started = time.perf_counter()
        for future in done:
            future.result()
        return time.perf_counter() - started


def latency_p50_ms(server: ServerProcess, scale: Scale, image_format: str) -> float:
    def body(seed: int) -> dict[str, Any]:
        return request_body(scale, seed, image_format)

    times = one_client_times(server, scale.latency_samples, body, time_left())
    return statistics.median(times) * 1000


def measure(server: ServerProcess, scale: Scale, result: Result) -> None:
    started = time.monotonic()
    for batch in BATCHES:
        run_clients(server, scale, batch, 2)
    result.warm_up_s = time.monotonic() - started
    log(f"  warmed up at batch {', '.join(map(str, BATCHES))} in {result.warm_up_s:.1f} s")
    for image_format in ("png", "jpeg"):
        result.latency_p50_ms[image_format] = latency_p50_ms(server, scale, image_format)
        log(f"  latency p50 ({image_format}): {result.latency_p50_ms[image_format]:.1f} ms")
    for batch in BATCHES:
        per_client = max(1, scale.requests_per_client(batch))
        images_before, batches_before = engine_counts(server)
        elapsed = run_clients(server, scale, batch, per_client)
        images, batches = engine_counts(server)
        result.images_per_s[batch] = batch * per_client / elapsed
        result.mean_batch[batch] = (images - images_before) / max(1.0, batches - batches_before)
        log(
            f"  {batch} client(s): {result.images_per_s[batch]:.1f} images/s, "
            f"{result.mean_batch[batch]:.2f} images per pipeline call"
        )


def run_variant(
    variant: Variant,
    scale: Scale,
    model_dirs: dict[bool, Path],
    args: argparse.Namespace,
    deadline: float,
) -> Result:
    result = Result(variant.name, variant.speedups or "none", variant.fp16_safe_vae)
    left = deadline - time.monotonic()
    if left < variant.needs_s:
        result.error = f"skipped: {left:.0f} s of budget left, it needs about {variant.needs_s:.0f}"
        log(f"{variant.name}: {result.error}")
        return result
    log(f"{variant.name}: starting the server (speed-ups: {result.speedups})")
    try:
        server = start_server(model_dirs[variant.fp16_safe_vae], variant, scale, args, left)
    except (ServerExited, TimeoutError) as exc:
        result.error = f"server did not start: {str(exc).strip().splitlines()[-1]}"
        log(f"{variant.name}: {result.error}")
        return result
    try:
        log(f"{variant.name}: ready")
        measure(server, scale, result)
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
        log(f"{variant.name}: failed: {result.error}")
    finally:
        server.stop()
    return result


def report(results: list[Result], scale: Scale) -> None:
    print()
    print(f"{scale.name} model, {scale.size}x{scale.size}, 1 step, on {device_name(scale)}")
    header = f"{'variant':10}{'speed-ups':32}{'p50 png':>9}{'p50 jpeg':>10}"
    header += "".join(f"{f'img/s b{b}':>10}" for b in BATCHES) + f"{'per call b8':>13}"
    print(header)
    for r in results:
        if r.error:
            print(f"{r.variant:10}{r.error}")
            continue
        vae = "fp16 VAE, " if r.fp16_safe_vae else "bf16/fp32 VAE, "
        row = f"{r.variant:10}{(vae + r.speedups):32}"
        row += f"{r.latency_p50_ms['png']:>7.1f}ms{r.latency_p50_ms['jpeg']:>8.1f}ms"
        row += "".join(f"{r.images_per_s[b]:>10.1f}" for b in BATCHES)
        row += f"{r.mean_batch[max(BATCHES)]:>13.2f}"
        print(row)
    print("targets on one H100: p50 <= 60 ms end to end, >= 30 images/s at batch 8")


def device_name(scale: Scale) -> str:
    if scale.device == "cuda":
        return torch.cuda.get_device_name(0)
    return f"CPU ({os.cpu_count()} cores)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command")
    serve_parser = commands.add_parser("serve", help="(internal) run the app for one variant")
    serve_parser.add_argument("--model-dir", required=True)
    serve_parser.add_argument("--port", type=int, required=True)
    serve_parser.add_argument("--device", default="auto")
    serve_parser.add_argument("--speedups", default="")
    serve_parser.add_argument("--batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--smoke", action="store_true", help="tiny configs on the CPU, 64x64")
    parser.add_argument(
        "--batch-wait-ms", type=float, default=2.0, help="the server's batch window (its default)"
    )
    parser.add_argument(
        "--variants", default=",".join(VARIANTS), help=f"comma list of {', '.join(VARIANTS)}"
    )
    parser.add_argument(
        "--budget-s", type=float, default=450, help="start no variant that would end after this"
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", type=Path, help="build the model here and keep it")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args)
        return

    scale = SMOKE if args.smoke else FULL
    if scale.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure (--smoke runs the same path tiny on CPU)")
        return
    unknown = [name for name in args.variants.split(",") if name not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    variants = [VARIANTS[name] for name in args.variants.split(",")]
    deadline = STARTED + args.budget_s
    global hard_deadline
    hard_deadline = deadline + GRACE_S
    import diffusers

    versions = f"torch {torch.__version__}, diffusers {diffusers.__version__}"
    log(f"{scale.name} model on {device_name(scale)} ({versions}); budget {args.budget_s:.0f} s")

    scratch = Path(tempfile.mkdtemp(prefix="bench-sdxl-gpu-"))
    model_dir = args.keep or scratch / "model"
    try:
        if not (model_dir / "model_index.json").is_file():
            build_model(scale, model_dir)
        model_dirs = {False: model_dir, True: with_fp16_safe_vae(model_dir, scratch / "fp16-vae")}
        args.log_dir = scratch / "logs"
        results: list[Result] = []
        for variant in variants:
            results.append(run_variant(variant, scale, model_dirs, args, deadline))
            if results[-1].error and "did not start" in results[-1].error:
                print((args.log_dir / f"{variant.name}.log").read_text()[-3000:])
            write_json(args.json, scale, results)  # partial results survive a killed run
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report(results, scale)
    log("done")


def write_json(path: Path | None, scale: Scale, results: list[Result]) -> None:
    if path is None:
        return
    payload = {
        "device": device_name(scale),
        "size": scale.size,
        "results": [asdict(r) for r in results],
    }
    path.write_text(json.dumps(payload, indent=2))


if __name__ == "__main__":
    main()
