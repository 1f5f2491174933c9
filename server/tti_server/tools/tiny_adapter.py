"""Tiny random LoRA adapters for the tiny pipelines, written with no network.

For tests and benchmarks. `peft` adds a LoRA to the tiny SDXL UNet's attention
projections with random non-zero up-projections (peft's default init leaves them zero,
an adapter that changes nothing), so each adapter changes the images, and two seeds
change them differently. diffusers' own `save_lora_weights` writes the file, so it loads
through the real diffusers LoRA loader as a downloaded adapter does.

`cross_attention_dim` builds the adapter on a UNet whose cross-attention takes text
states of another width: an adapter of another architecture (as an SD 1.5 LoRA is for
SDXL), which diffusers refuses at load with a size mismatch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: What the adapters change: every attention's query, key, value and output projections.
TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
#: The file `save_lora_weights` writes (and diffusers' loader looks for by default).
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
FAMILIES = ("sdxl",)
_RANK = 4


def write_tiny_adapter(
    path: Path, family: str = "sdxl", seed: int = 0, cross_attention_dim: int | None = None
) -> Path:
    """Write a tiny random LoRA for `family`'s tiny pipeline into directory `path`; return
    the file. The same seed writes the same adapter; the caller's RNG state is untouched."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from tti_server.tools.tiny_model import TINY_UNET

    if family not in FAMILIES:
        raise ValueError(f"family: no tiny adapter of family {family!r}; known: sdxl")
    config: dict[str, Any] = dict(TINY_UNET)
    if cross_attention_dim is not None:
        config["cross_attention_dim"] = cross_attention_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**config)
        # init_lora_weights=False: random A and B, so the adapter is not a no-op.
        lora = LoraConfig(
            r=_RANK, lora_alpha=_RANK, target_modules=TARGET_MODULES, init_lora_weights=False
        )
        unet.add_adapter(lora)
    path.mkdir(parents=True, exist_ok=True)
    StableDiffusionXLPipeline.save_lora_weights(
        str(path), unet_lora_layers=get_peft_model_state_dict(unet), weight_name=WEIGHT_NAME
    )
    written = path / WEIGHT_NAME
    # safetensors writes 0600; a pod reads it as another user (as the tiny model).
    written.chmod(written.stat().st_mode | 0o444)
    return written
