"""Tiny random-weight pipelines of every model family, written with no network.

For tests and demos. Each is made of the real diffusers and transformers classes
its family's checkpoints use, only very small, so it loads through exactly the
code path of the real model (`AutoPipelineForText2Image.from_pretrained(dir)`).
Its weights are random: it draws noise, not pictures.

`write_tiny_model(dir, family)` is the entry point; `FAMILIES` names the makers.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tti_server.tools.tiny_model.flow import (
    tiny_flux_dev_pipeline,
    tiny_flux_schnell_pipeline,
    tiny_sd3_pipeline,
)
from tti_server.tools.tiny_model.sdxl import (
    TINY_TEXT,
    TINY_UNET,
    TINY_VAE,
    random_sdxl_pipeline,
    tiny_sdxl_pipeline,
    turbo_scheduler,
)
from tti_server.tools.tiny_model.text import byte_level_clip_tokenizer

__all__ = [
    "CAIKIT_PIPELINE_KEY",
    "FAMILIES",
    "TINY_TEXT",
    "TINY_UNET",
    "TINY_VAE",
    "byte_level_clip_tokenizer",
    "random_sdxl_pipeline",
    "readable_by_all",
    "turbo_scheduler",
    "write_tiny_caikit_model",
    "write_tiny_model",
]

# The seed's caikit module names the pipeline sub-folder under this key.
CAIKIT_PIPELINE_KEY = "sdxl_model"

_SEED = 0

#: Each family's maker: a pipeline with random weights drawn from torch's global RNG.
FAMILIES: dict[str, Callable[[], Any]] = {
    "sdxl": tiny_sdxl_pipeline,
    "sd3": tiny_sd3_pipeline,
    "flux-schnell": tiny_flux_schnell_pipeline,
    "flux-dev": tiny_flux_dev_pipeline,
}


def write_tiny_model(path: Path, family: str = "sdxl") -> None:
    """Write the tiny pipeline of `family` as a diffusers directory at `path` (a few MB).

    The weights are drawn from a fixed seed without touching the caller's global
    RNG state, so two calls write identical models.
    """
    import torch

    maker = FAMILIES.get(family)
    if maker is None:
        known = ", ".join(FAMILIES)
        raise ValueError(f"family: no tiny model of family {family!r}; known: {known}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_SEED)
        pipeline = maker()
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
    """Write the tiny SDXL pipeline as the seed's caikit module saves a model.

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
