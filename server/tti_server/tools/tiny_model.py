"""A tiny random-weight SDXL pipeline, written with no network, for tests and demos.

It is made of the real diffusers and transformers classes an SDXL-Turbo checkpoint
uses (UNet with text-time conditioning, AutoencoderKL, two CLIP text encoders and
their tokenizers, Euler-ancestral scheduler with trailing timesteps), only very
small, so it loads through exactly the code path of the real model. Its weights
are random: it draws noise, not pictures.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

# The seed's caikit module names the pipeline sub-folder under this key.
CAIKIT_PIPELINE_KEY = "sdxl_model"

_SEED = 0
_TEXT_HIDDEN = 32  # each text encoder; the UNet sees both concatenated (64)
_TIME_EMBED = 8
_VOCAB_SIZE = 1000
# CLIP pads every prompt to 77 tokens; a tokenizer built without this limit makes the
# pipeline fail with "OverflowError: int too big to convert".
_MAX_TOKENS = 77


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
TINY_TEXT: dict[str, Any] = {
    "vocab_size": _VOCAB_SIZE,
    "hidden_size": _TEXT_HIDDEN,
    "intermediate_size": 37,
    "num_attention_heads": 4,
    "num_hidden_layers": 5,
    "projection_dim": _TEXT_HIDDEN,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}


def write_tiny_model(path: Path) -> None:
    """Write the tiny pipeline as a diffusers directory at `path` (about 10 MB).

    The weights are drawn from a fixed seed without touching the caller's global
    RNG state, so two calls write identical models.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        pipeline = random_sdxl_pipeline(TINY_UNET, TINY_VAE, TINY_TEXT, TINY_TEXT)
    path.mkdir(parents=True, exist_ok=True)
    pipeline.save_pretrained(str(path))
    readable_by_all(path)


def readable_by_all(folder: Path) -> None:
    """safetensors writes its files 0600; the server's pod runs as uid 10001, and a hostPath
    volume keeps the owner and mode the files have on the node."""
    for item in [folder, *folder.rglob("*")]:
        extra = 0o555 if item.is_dir() else 0o444
        item.chmod(item.stat().st_mode | extra)


def write_tiny_caikit_model(path: Path, subfolder: str = "sdxl_model") -> None:
    """Write the tiny pipeline as the seed's caikit module saves a model.

    That is a `config.yml` naming the sub-folder that holds the diffusers pipeline.
    """
    path.mkdir(parents=True, exist_ok=True)
    write_tiny_model(path / subfolder)
    config = {
        "module_id": "28aa777c-1b13-21b0-11b3-bb9c3b0cbb56",
        "module_class": "caikit_computer_vision.modules.text_to_image.sdxl.SDXL",
        "name": "Text to Image via SDXL",
        "version": "0.1.0",
        "model_name": "tti-tiny-sdxl",
        CAIKIT_PIPELINE_KEY: subfolder,
    }
    (path / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))


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
    special = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "max_position_embeddings": _MAX_TOKENS,
    }
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


def byte_level_clip_tokenizer() -> Any:
    """A CLIP tokenizer whose vocabulary is every byte, alone or ending a word.

    Any prompt tokenizes (one token per byte), which is all random weights need;
    the vocabulary is written here, so no network is needed.
    """
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for symbol in symbols + [s + "</w>" for s in symbols]:
        vocab[symbol] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=_MAX_TOKENS)


def _byte_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE uses to stand for the bytes (GPT-2's map)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    shifted = [b for b in range(256) if b not in printable]
    codes = printable + [256 + i for i in range(len(shifted))]
    return [chr(code) for code in codes]
