"""Where the time of one SDXL-Turbo generation goes, on one GPU, without HTTP.

Builds the full-size SDXL-Turbo architecture with random weights (as
bench_sdxl_gpu.py does), loads it through `load_pipeline` with and without the
speed-ups, and times each stage at 512x512, one step: the prompt encoders, the
UNet and scheduler (`output_type="latent"`), the backend's VAE decode (the VAE in
the dtype `vae_dtype` chose at load), the tensor-to-PIL step, the backend's whole
`generate`, and the image encoders. For a VAE whose config says `force_upcast`
it also times, side by side on the same latents, the decode with the VAE kept in
fp32 (what a GPU without bf16 gets) and diffusers' own way (the fp16 VAE converted
to fp32 and back around every decode), and prints diffusers' time over ours. The
gap between this and bench_sdxl_gpu.py's figures is the server's own cost.
Without CUDA it says so and exits 0.

    python tests/benchmarks/bench_sdxl_gpu_breakdown.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sdxl_gpu import FULL, build_model, with_fp16_safe_vae

from tti_server.backends.base import BatchKey, GenerationRequest
from tti_server.backends.diffusion import (
    DiffusionBackend,
    Speedups,
    cast_vae,
    decode_latents,
    load_pipeline,
    to_pil,
)

SIZE = 512
PROMPT = "a photo of a cat"


def median_ms(run: Callable[[], Any], repeats: int = 10) -> float:
    run()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def stages(backend: DiffusionBackend, batch: int) -> dict[str, float]:
    pipeline = backend.pipeline
    prompts = [PROMPT] * batch
    common = {"height": SIZE, "width": SIZE, "num_inference_steps": 1, "guidance_scale": 0.0}
    request = GenerationRequest(PROMPT, BatchKey(SIZE, SIZE, 1, 0.0, None), n=batch, seed=0)
    with torch.inference_mode():
        latents = pipeline(prompt=prompts, output_type="latent", **common).images
        decoded = decode_latents(pipeline, latents)
        timings = {
            "encode_prompt": median_ms(
                lambda: pipeline.encode_prompt(prompts, do_classifier_free_guidance=False)
            ),
            "unet+scheduler": median_ms(
                lambda: pipeline(prompt=prompts, output_type="latent", **common)
            ),
            "vae decode": median_ms(lambda: decode_latents(pipeline, latents)),
            "to PIL": median_ms(lambda: to_pil(pipeline, decoded)),
            "whole generate": median_ms(lambda: backend.generate([request])),
        }
        if pipeline.vae.config.force_upcast:
            timings["vae decode kept fp32"] = kept_in_fp32_decode_ms(pipeline, latents)
            timings["diffusers' decode"] = diffusers_decode_ms(pipeline.vae, latents)
    return timings


def kept_in_fp32_decode_ms(pipeline: Any, latents: torch.Tensor) -> float:
    """The backend's decode with the VAE kept in fp32, as on a GPU without bf16."""
    kept = pipeline.vae.dtype
    cast_vae(pipeline.vae, torch.float32)
    try:
        return median_ms(lambda: decode_latents(pipeline, latents))
    finally:
        cast_vae(pipeline.vae, kept)


def diffusers_decode_ms(vae: Any, latents: torch.Tensor) -> float:
    """What diffusers' fp16 pipeline does for a force_upcast VAE, timed on the same latents."""
    kept = vae.dtype
    cast_vae(vae, torch.float16)

    def decode() -> Any:
        cast_vae(vae, torch.float32)
        sample = latents.to(torch.float32) / vae.config.scaling_factor
        decoded = vae.decode(sample, return_dict=False)[0]
        cast_vae(vae, torch.float16)
        return decoded

    try:
        return median_ms(decode)
    finally:
        cast_vae(vae, kept)


def encoders(image: Any) -> dict[str, float]:
    def encode(**options: Any) -> Callable[[], bytes]:
        def run() -> bytes:
            buffer = io.BytesIO()
            image.save(buffer, **options)
            return buffer.getvalue()

        return run

    return {
        "png (level 6)": median_ms(encode(format="PNG")),
        "png (level 1)": median_ms(encode(format="PNG", compress_level=1)),
        "jpeg": median_ms(encode(format="JPEG")),
        "webp": median_ms(encode(format="WEBP")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", type=Path, help="build the model here and keep it")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure")
        return
    model_dir = args.keep or Path(tempfile.mkdtemp(prefix="bench-breakdown-")) / "model"
    if not (model_dir / "model_index.json").is_file():
        build_model(FULL, model_dir)
    fast_dir = with_fp16_safe_vae(model_dir, model_dir.parent / "fp16-vae")
    print(f"{torch.cuda.get_device_name(0)}, {SIZE}x{SIZE}, 1 step, median ms of 10")
    for label, directory, speedups in (
        ("VAE as published (force_upcast)", model_dir, ""),
        ("fp16-safe VAE, channels_last, fuse_qkv", fast_dir, "channels_last,fuse_qkv"),
    ):
        backend = load_pipeline(str(directory), "cuda:0", Speedups.parse(speedups))
        vae = str(backend.pipeline.vae.dtype).removeprefix("torch.")
        for batch in (1, 8):
            timings = stages(backend, batch)
            row = ", ".join(f"{name} {ms:.1f}" for name, ms in timings.items())
            if "diffusers' decode" in timings:
                ratio = timings["diffusers' decode"] / timings["vae decode"]
                row += f" (diffusers' / ours: {ratio:.2f}x)"
            print(f"{label}, VAE kept in {vae}, batch {batch}: {row}")
        key = BatchKey(SIZE, SIZE, 1, 0.0, None)
        [[image]] = backend.generate([GenerationRequest(PROMPT, key, n=1, seed=0)])
        del backend
        torch.cuda.empty_cache()
    row = ", ".join(f"{name} {ms:.1f}" for name, ms in encoders(image).items())
    print(f"encoding one {SIZE}x{SIZE} image (random weights draw noise, the worst case): {row}")


if __name__ == "__main__":
    main()
