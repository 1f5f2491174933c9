"""The tiny SDXL(-Turbo) pipeline.

It is made of the real diffusers and transformers classes an SDXL-Turbo checkpoint
uses (UNet with text-time conditioning, AutoencoderKL, two CLIP text encoders and
their tokenizers, Euler-ancestral scheduler with trailing timesteps), only very small.
"""

from __future__ import annotations

from typing import Any

from tti_server.tools.tiny_model.text import (
    TINY_CLIP,
    byte_level_clip_tokenizer,
    clip_special_ids,
)

_TEXT_HIDDEN = TINY_CLIP["hidden_size"]  # each text encoder; the UNet sees both (64)
_TIME_EMBED = 8


#: The tiny configs, shaped like diffusers' own SDXL test components.
TINY_UNET: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "sample_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4),
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": _TIME_EMBED,
    "transformer_layers_per_block": (1, 2),
    # 6 time ids (original size, crop, target size) embedded, plus the pooled text.
    "projection_class_embeddings_input_dim": 6 * _TIME_EMBED + _TEXT_HIDDEN,
    "cross_attention_dim": 2 * _TEXT_HIDDEN,  # both text encoders' states, concatenated
    "norm_num_groups": 1,
}
TINY_VAE: dict[str, Any] = {
    "block_out_channels": (32, 64),
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D", "DownEncoderBlock2D"),
    "up_block_types": ("UpDecoderBlock2D", "UpDecoderBlock2D"),
    "latent_channels": 4,
    "sample_size": 128,
}
TINY_TEXT = TINY_CLIP


def tiny_sdxl_pipeline() -> Any:
    """The tiny SDXL-Turbo pipeline, from the caller's RNG state."""
    return random_sdxl_pipeline(TINY_UNET, TINY_VAE, TINY_TEXT, TINY_TEXT)


def random_sdxl_pipeline(
    unet: dict[str, Any],
    vae: dict[str, Any],
    text_encoder: dict[str, Any],
    text_encoder_2: dict[str, Any],
    device: str = "cpu",
) -> Any:
    """An SDXL pipeline of these component configs with random fp32 weights on `device`.

    Building a large model directly on a GPU is much faster than on the CPU. The
    tokenizers are byte-level (`byte_level_clip_tokenizer`) whatever the text
    encoders' vocabulary size.
    """
    import torch
    from diffusers import AutoencoderKL, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tokenizer = byte_level_clip_tokenizer()
    special = clip_special_ids(tokenizer)
    # Only the networks: the scheduler computes its tables with numpy, on the CPU.
    with torch.device(device):
        networks = {
            "unet": UNet2DConditionModel(**unet),
            "vae": AutoencoderKL(**vae),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**text_encoder, **special)),
            "text_encoder_2": CLIPTextModelWithProjection(
                CLIPTextConfig(**text_encoder_2, **special)
            ),
        }
    return StableDiffusionXLPipeline(
        **networks,
        scheduler=turbo_scheduler(),
        tokenizer=tokenizer,
        tokenizer_2=byte_level_clip_tokenizer(),
    )


def turbo_scheduler() -> Any:
    """SDXL-Turbo's scheduler: Euler ancestral; one to four steps need trailing timesteps."""
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="trailing",
        prediction_type="epsilon",
    )
