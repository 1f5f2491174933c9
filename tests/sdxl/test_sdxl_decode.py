"""The backend's own VAE decode, on the CPU with the tiny model.

The pipeline stops at the latents and the backend decodes them with the VAE in the
dtype chosen once at load time. Against diffusers' own decode (`output_type="pil"`)
for the same seed, the fp32 images must be identical byte for byte: the same
operations run in the same order.

A bf16 VAE is exercised on the CPU too (torch runs bf16 convolutions there,
slowly). Against the fp32 decode of the same latents it differed by at most
2/255 per channel (mean 0.3/255) at 64-128 px; `BF16_TOLERANCE` allows 4/255.
The tiny model's weights are random, so this bounds the plumbing (casts, unscaling,
postprocessing), not the real SDXL VAE's bf16 quality.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from support.tiny_model import pixel_difference

from tti_server.backends.base import BatchKey, GenerationRequest
from tti_server.backends.diffusion import (
    DiffusionBackend,
    cast_vae,
    decode_latents,
    image_seeds,
    load_pipeline,
    to_pil,
    vae_dtype,
)

BF16_TOLERANCE = 4
PLAIN = BatchKey(height=64, width=96, num_steps=2, guidance_scale=0.0, negative_prompt=None)
GUIDED = BatchKey(height=72, width=64, num_steps=1, guidance_scale=2.5, negative_prompt="blurry")


@pytest.fixture
def own_backend(tiny_model_dir: Path) -> DiffusionBackend:
    """A backend of its own, for tests that change its pipeline."""
    return load_pipeline(str(tiny_model_dir), "cpu")


def diffusers_images(
    backend: DiffusionBackend, batch: list[GenerationRequest]
) -> list[Image.Image]:
    """What diffusers' pipeline itself returns for `batch`: its own decode, to PIL."""
    key = batch[0].key
    prompts = [request.prompt for request in batch for _ in range(request.n)]
    seeds = [seed for request in batch for seed in image_seeds(request)]
    with torch.inference_mode():
        output = backend.pipeline(
            prompt=prompts,
            negative_prompt=[key.negative_prompt] * len(prompts) if key.negative_prompt else None,
            height=key.height,
            width=key.width,
            num_inference_steps=key.num_steps,
            guidance_scale=key.guidance_scale,
            generator=[torch.Generator().manual_seed(seed) for seed in seeds],
            output_type="pil",
        )
    return list(output.images)


def backend_images(backend: DiffusionBackend, batch: list[GenerationRequest]) -> list[Image.Image]:
    return [image for images in backend.generate(batch) for image in images]


def tiny_latents(backend: DiffusionBackend, seed: int = 5) -> torch.Tensor:
    with torch.inference_mode():
        latents: torch.Tensor = backend.pipeline(
            prompt=["a cat", "a dog"],
            height=64,
            width=64,
            num_inference_steps=1,
            guidance_scale=0.0,
            generator=[torch.Generator().manual_seed(seed + i) for i in range(2)],
            output_type="latent",
        ).images
    return latents


def decode(backend: DiffusionBackend, latents: torch.Tensor) -> list[Image.Image]:
    with torch.inference_mode():
        return to_pil(backend.pipeline, decode_latents(backend.pipeline, latents))


def batch_of(key: BatchKey) -> list[GenerationRequest]:
    return [GenerationRequest("a cat", key, n=2, seed=11), GenerationRequest("a dog", key, 1, 3)]


# --- parity with diffusers' own decode ------------------------------------------------


@pytest.mark.parametrize("key", [PLAIN, GUIDED], ids=["plain", "guided"])
def test_images_are_those_of_diffusers_own_decode(
    tiny_backend: DiffusionBackend, key: BatchKey
) -> None:
    batch = batch_of(key)
    ours = backend_images(tiny_backend, batch)
    theirs = diffusers_images(tiny_backend, batch)
    assert len(ours) == len(theirs) == 3
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.size == reference.size == (key.width, key.height)
        assert mine.tobytes() == reference.tobytes()


def test_latents_mean_and_std_are_undone_as_diffusers_does(
    own_backend: DiffusionBackend, tiny_backend: DiffusionBackend
) -> None:
    # SDXL's VAE config has none; other VAEs of the family (and a future SDXL VAE) do.
    own_backend.pipeline.vae.register_to_config(
        latents_mean=[0.5, -0.25, 0.1, 0.0], latents_std=[1.5, 0.5, 2.0, 1.0]
    )
    batch = batch_of(PLAIN)
    ours = backend_images(own_backend, batch)
    for mine, reference in zip(ours, diffusers_images(own_backend, batch), strict=True):
        assert mine.tobytes() == reference.tobytes()
    # The mean and std changed the images, so the comparison above was not vacuous.
    plain = backend_images(tiny_backend, batch)
    assert pixel_difference(ours[0], plain[0]) > 10


class MirrorWatermarker:
    """Stands in for diffusers' invisible-watermark encoder (not installed here)."""

    def __init__(self) -> None:
        self.dtypes: list[torch.dtype] = []

    def apply_watermark(self, images: torch.Tensor) -> torch.Tensor:
        self.dtypes.append(images.dtype)
        return images.flip(-1)


def test_the_pipelines_watermarker_is_applied_as_diffusers_does(
    own_backend: DiffusionBackend, tiny_backend: DiffusionBackend
) -> None:
    watermarker = MirrorWatermarker()
    own_backend.pipeline.watermark = watermarker
    batch = batch_of(PLAIN)
    ours = backend_images(own_backend, batch)
    theirs = diffusers_images(own_backend, batch)
    assert watermarker.dtypes == [torch.float32, torch.float32]  # once per decode, in fp32
    for mine, reference in zip(ours, theirs, strict=True):
        assert mine.tobytes() == reference.tobytes()
    unmarked = backend_images(tiny_backend, batch)[0]
    assert ours[0].tobytes() == unmarked.transpose(Image.Transpose.FLIP_LEFT_RIGHT).tobytes()


# --- the VAE's dtype, chosen once ------------------------------------------------------


@pytest.mark.parametrize(
    ("device", "force_upcast", "bf16_supported", "expected"),
    [
        ("cuda:0", True, True, torch.bfloat16),  # SDXL's VAE on an A100/H100
        ("cuda", True, False, torch.float32),  # SDXL's VAE on a GPU without bf16 (V100, T4)
        ("cuda:1", False, True, torch.float16),  # an fp16-safe VAE keeps the pipeline's fp16
        ("cuda:0", False, False, torch.float16),
        ("cpu", True, True, torch.float32),  # the CPU is fp32 throughout
        ("cpu", False, False, torch.float32),
    ],
)
def test_vae_dtype_choice(
    device: str, force_upcast: bool, bf16_supported: bool, expected: torch.dtype
) -> None:
    assert vae_dtype(device, force_upcast=force_upcast, bf16_supported=bf16_supported) == expected


def test_loading_on_the_cpu_keeps_everything_fp32(tiny_backend: DiffusionBackend) -> None:
    pipeline = tiny_backend.pipeline
    assert pipeline.vae.config.force_upcast  # as SDXL's VAE says
    assert pipeline.vae.dtype == pipeline.unet.dtype == torch.float32


def test_a_generation_neither_converts_nor_copies_the_vae(own_backend: DiffusionBackend) -> None:
    vae = own_backend.pipeline.vae
    cast_vae(vae, torch.bfloat16)  # what load_pipeline does on a GPU with bf16
    storage = {name: parameter.data_ptr() for name, parameter in vae.named_parameters()}
    dtypes_while_decoding: list[torch.dtype] = []

    def record_dtype(module: torch.nn.Module, args: Any) -> None:
        dtypes_while_decoding.append(next(module.parameters()).dtype)

    hook = vae.decoder.register_forward_pre_hook(record_dtype)
    try:
        own_backend.generate([GenerationRequest("a fox", PLAIN, n=2, seed=1)])
        own_backend.generate([GenerationRequest("a fox", PLAIN, n=1, seed=2)])
    finally:
        hook.remove()
    assert dtypes_while_decoding == [torch.bfloat16, torch.bfloat16]
    # A conversion there and back would leave the dtype as it was but not the storage.
    assert {name: p.data_ptr() for name, p in vae.named_parameters()} == storage
    assert {p.dtype for p in vae.parameters()} == {torch.bfloat16}


# --- a bf16 VAE, exercised on the CPU --------------------------------------------------


@pytest.mark.parametrize("latent_dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_a_bf16_vae_decodes_latents_of_any_dtype_close_to_fp32(
    own_backend: DiffusionBackend, tiny_backend: DiffusionBackend, latent_dtype: torch.dtype
) -> None:
    latents = tiny_latents(tiny_backend)
    reference = decode(tiny_backend, latents)
    cast_vae(own_backend.pipeline.vae, torch.bfloat16)
    images = decode(own_backend, latents.to(latent_dtype))
    assert len(images) == len(reference) == 2
    for image, expected in zip(images, reference, strict=True):
        assert image.size == expected.size == (64, 64)
        assert pixel_difference(image, expected) <= BF16_TOLERANCE


def test_a_backend_with_a_bf16_vae_draws_the_fp32_images(
    own_backend: DiffusionBackend, tiny_backend: DiffusionBackend
) -> None:
    cast_vae(own_backend.pipeline.vae, torch.bfloat16)
    batch = batch_of(PLAIN)
    bf16 = backend_images(own_backend, batch)
    fp32 = backend_images(tiny_backend, batch)
    for image, expected in zip(bf16, fp32, strict=True):
        assert pixel_difference(image, expected) <= BF16_TOLERANCE
    assert pixel_difference(bf16[0], bf16[1]) > 10 * BF16_TOLERANCE  # different seeds
