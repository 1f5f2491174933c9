"""Tiny LoRA adapters for the tiny SDXL pipeline, written once per session with no network.

`tiny_adapters` holds two adapters that change the images differently (seeds 1 and 2) and
one made for a UNet whose cross-attention takes text states of another width, which
diffusers refuses at load (as it refuses an SD 1.5 LoRA on SDXL). Each is a directory
holding one `.safetensors` file, as the manifest's `path` may name.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tti_server.tools.tiny_adapter import write_tiny_adapter
from tti_server.tools.tiny_model import TINY_UNET

#: Not the tiny UNet's cross-attention width: the adapter's key/value projections misfit.
MISMATCHED_WIDTH = TINY_UNET["cross_attention_dim"] * 3 // 4


@dataclass(frozen=True)
class TinyAdapters:
    a: Path
    b: Path
    mismatched: Path


@pytest.fixture(scope="session")
def tiny_adapters(tmp_path_factory: pytest.TempPathFactory) -> TinyAdapters:
    root = tmp_path_factory.mktemp("tiny-adapters")
    write_tiny_adapter(root / "a", seed=1)
    write_tiny_adapter(root / "b", seed=2)
    write_tiny_adapter(root / "mismatched", seed=3, cross_attention_dim=MISMATCHED_WIDTH)
    return TinyAdapters(root / "a", root / "b", root / "mismatched")
