"""The SDXL VAE decode on one GPU: kept in bf16, kept in fp32, or upcast on every call.

Builds the published SDXL VAE with random weights (the time is the same as with
the real ones) and decodes the same fp16 latents of 512x512 images, at batch 1
and 8, three ways side by side in one run: the backend's decode with the VAE kept
in bf16 (what `load_pipeline` does on a GPU with bf16), the same with the VAE kept in
fp32 (a GPU without bf16), and diffusers' fp16 pipeline's way for a VAE whose
config says force_upcast (fp16 weights converted to fp32 before every decode and
back after it). Prints the median of 10 in ms, the ratios, and the largest
difference between the bf16 and fp32 decodes (random weights: a check of the
plumbing, not of the real VAE's quality). Without CUDA it says so and exits 0.

    python tests/benchmarks/bench_sdxl_gpu_vae.py
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sdxl_gpu import FULL_VAE
from bench_sdxl_gpu_breakdown import diffusers_decode_ms, median_ms

from tti_server.backends.diffusion import cast_vae, decode_latents

SIZE = 512


def main() -> None:
    if not torch.cuda.is_available():
        print("no CUDA device here: nothing to measure")
        return
    print(
        f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}: SDXL VAE (random "
        f"weights), latents of {SIZE}x{SIZE} images, median ms of 10"
    )
    measure("cuda", SIZE)


def measure(device: str, size: int) -> None:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(**FULL_VAE).to(device).eval()
    pipeline = SimpleNamespace(vae=vae, watermark=None)  # all `decode_latents` reads
    for batch in (1, 8):
        # What the fp16 UNet hands over.
        latents = torch.randn(batch, 4, size // 8, size // 8, device=device, dtype=torch.float16)
        with torch.inference_mode():
            fp32_ms, fp32 = kept_in(torch.float32, pipeline, latents)
            bf16_ms, bf16 = kept_in(torch.bfloat16, pipeline, latents)
            upcast_ms = diffusers_decode_ms(vae, latents)  # leaves the VAE in bf16
        difference = (bf16 - fp32).abs().max().item()
        print(
            f"batch {batch}: kept bf16 {bf16_ms:.1f} ms, kept fp32 {fp32_ms:.1f} ms, "
            f"diffusers' per-call upcast {upcast_ms:.1f} ms; "
            f"upcast / bf16 {upcast_ms / bf16_ms:.2f}x, fp32 / bf16 {fp32_ms / bf16_ms:.2f}x; "
            f"max |bf16 - fp32| {difference:.4f} (images in [-1, 1])"
        )


def kept_in(
    dtype: torch.dtype, pipeline: SimpleNamespace, latents: torch.Tensor
) -> tuple[float, torch.Tensor]:
    """The backend's decode with the VAE kept in `dtype`: its median ms, and its images."""
    cast_vae(pipeline.vae, dtype)
    return median_ms(lambda: decode_latents(pipeline, latents)), decode_latents(pipeline, latents)


if __name__ == "__main__":
    main()
