"""The tiny flow-matching pipelines: Stable Diffusion 3(.5) and FLUX.1 schnell and dev.

Each is made of the classes its real checkpoint's `model_index.json` names: an MMDiT
transformer, a 16-channel AutoencoderKL that shrinks images 8 times with its real
scaling and shift factors, CLIP text encoders, a T5 v1.1 encoder, and the real
scheduler config. Only the widths and depths are tiny, so the size rules (SD3: a
multiple of 16; Flux: 16, its 2x2 latent patches) and the text lengths are the
real ones.
"""

from __future__ import annotations

from typing import Any

from tti_server.tools.tiny_model.text import (
    TINY_CLIP,
    TINY_T5,
    byte_level_clip_tokenizer,
    character_t5_tokenizer,
    clip_special_ids,
    tiny_t5_encoder,
)

_LATENT_CHANNELS = 16

#: Four blocks, so 8x smaller latents as in the real VAEs; no quant convs, as theirs.
TINY_LATENT_VAE: dict[str, Any] = {
    "block_out_channels": (8, 16, 16, 16),
    "layers_per_block": 1,
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": _LATENT_CHANNELS,
    "norm_num_groups": 8,
    "sample_size": 64,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}
#: The latent normalisation of the real VAEs (stabilityai/stable-diffusion-3.5-*, FLUX.1-*).
SD3_VAE_FACTORS = {"scaling_factor": 1.5305, "shift_factor": 0.0609}
FLUX_VAE_FACTORS = {"scaling_factor": 0.3611, "shift_factor": 0.1159}

#: SD3.5's MMDiT (RMS-normed queries and keys); `caption_projection_dim` is its width.
TINY_SD3_TRANSFORMER: dict[str, Any] = {
    "sample_size": 8,  # latents, so the pipeline's default is 64x64 pixels
    "patch_size": 2,
    "in_channels": _LATENT_CHANNELS,
    "out_channels": _LATENT_CHANNELS,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "caption_projection_dim": 32,
    # T5's states; the two CLIPs' states (2 x 32) are zero-padded to this width.
    "joint_attention_dim": TINY_T5["d_model"],
    "pooled_projection_dim": 2 * TINY_CLIP["projection_dim"],  # both CLIPs' pooled outputs
    "pos_embed_max_size": 64,  # patches a side: images up to 1024 pixels
    "qk_norm": "rms_norm",
}

#: FLUX.1's transformer: `in_channels` is 4 latent channels per packed 2x2 patch.
TINY_FLUX_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 4 * _LATENT_CHANNELS,
    "num_layers": 1,
    "num_single_layers": 1,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": TINY_T5["d_model"],
    "pooled_projection_dim": TINY_CLIP["hidden_size"],  # CLIPTextModel's pooled output
    "axes_dims_rope": (4, 4, 8),  # sums to attention_head_dim
}

#: The scheduler configs of the real checkpoints. Schnell's is a fixed shift; dev
#: shifts by the image's size (its `mu`), as does the pipeline for both.
SD3_SCHEDULER: dict[str, Any] = {"num_train_timesteps": 1000, "shift": 3.0}
_FLUX_SHIFTING: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
    "base_shift": 0.5,
    "max_shift": 1.15,
}
FLUX_SCHNELL_SCHEDULER = {**_FLUX_SHIFTING, "shift": 1.0, "use_dynamic_shifting": False}
FLUX_DEV_SCHEDULER = {**_FLUX_SHIFTING, "shift": 3.0, "use_dynamic_shifting": True}


def tiny_sd3_pipeline() -> Any:
    """A tiny SD3.5 pipeline, from the caller's RNG state."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    clip_config = CLIPTextConfig(**TINY_CLIP, **clip_special_ids(byte_level_clip_tokenizer()))
    t5_tokenizer = character_t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=SD3Transformer2DModel(**TINY_SD3_TRANSFORMER),
        vae=AutoencoderKL(**TINY_LATENT_VAE, **SD3_VAE_FACTORS),
        text_encoder=CLIPTextModelWithProjection(clip_config),
        text_encoder_2=CLIPTextModelWithProjection(clip_config),
        text_encoder_3=tiny_t5_encoder(t5_tokenizer),
        tokenizer=byte_level_clip_tokenizer(),
        tokenizer_2=byte_level_clip_tokenizer(),
        tokenizer_3=t5_tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER),
    )


def tiny_flux_schnell_pipeline() -> Any:
    """A tiny FLUX.1-schnell pipeline: no guidance embedding, a fixed timestep shift."""
    return _tiny_flux_pipeline(guidance_embeds=False, scheduler=FLUX_SCHNELL_SCHEDULER)


def tiny_flux_dev_pipeline() -> Any:
    """A tiny FLUX.1-dev pipeline: the guidance scale is an input to the transformer."""
    return _tiny_flux_pipeline(guidance_embeds=True, scheduler=FLUX_DEV_SCHEDULER)


def _tiny_flux_pipeline(guidance_embeds: bool, scheduler: dict[str, Any]) -> Any:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        FluxPipeline,
        FluxTransformer2DModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    clip_tokenizer = byte_level_clip_tokenizer()
    t5_tokenizer = character_t5_tokenizer()
    return FluxPipeline(
        transformer=FluxTransformer2DModel(
            **TINY_FLUX_TRANSFORMER, guidance_embeds=guidance_embeds
        ),
        vae=AutoencoderKL(**TINY_LATENT_VAE, **FLUX_VAE_FACTORS),
        text_encoder=CLIPTextModel(CLIPTextConfig(**TINY_CLIP, **clip_special_ids(clip_tokenizer))),
        text_encoder_2=tiny_t5_encoder(t5_tokenizer),
        tokenizer=clip_tokenizer,
        tokenizer_2=t5_tokenizer,
        scheduler=FlowMatchEulerDiscreteScheduler(**scheduler),
    )
