"""pytest plugin: the tiny random-weight pipelines, written once per session.

`tiny_model_dir` is the SDXL diffusers directory, `tiny_caikit_dir` the same model
as the seed's caikit module saves one, `tiny_backend` the model loaded on the CPU,
and `tiny_family_dirs` one directory per family of `FAMILIES` (SDXL's is
`tiny_model_dir`). They are written with no network and the same fixed seed, so
every run sees the same weights. `pixel_difference` compares images where float
noise may differ.

`tiny_adapters` holds LoRA adapters for the tiny SDXL pipeline: two that change the images
differently (seeds 1 and 2) and one made for a UNet whose cross-attention takes text states
of another width, which diffusers refuses at load (as it refuses an SD 1.5 LoRA on SDXL).
Each is a directory holding one `.safetensors` file, as the manifest's `path` may name and
as a hub repository of an adapter holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tti_server.backends.diffusion import DiffusionBackend, load_pipeline
from tti_server.tools.tiny_adapter import write_tiny_adapter
from tti_server.tools.tiny_model import (
    FAMILIES,
    TINY_UNET,
    write_tiny_caikit_model,
    write_tiny_model,
)

#: Not the tiny UNet's cross-attention width: the adapter's key/value projections misfit.
MISMATCHED_WIDTH = TINY_UNET["cross_attention_dim"] * 3 // 4


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-sdxl") / "pipeline"
    write_tiny_model(path)
    return path


@pytest.fixture(scope="session")
def tiny_family_dirs(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> dict[str, Path]:
    """Each family's tiny pipeline directory, by family name."""
    root = tmp_path_factory.mktemp("tiny-families")
    dirs = {"sdxl": tiny_model_dir}
    for family in FAMILIES.keys() - dirs.keys():
        dirs[family] = root / family
        write_tiny_model(dirs[family], family)
    return dirs


@pytest.fixture(scope="session")
def tiny_caikit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-sdxl-caikit") / "sdxl_turbo_model"
    write_tiny_caikit_model(path)
    return path


@pytest.fixture(scope="session")
def tiny_backend(tiny_model_dir: Path) -> DiffusionBackend:
    return load_pipeline(str(tiny_model_dir), "cpu")


def pixel_difference(first: Image.Image, second: Image.Image) -> int:
    """The largest difference of any channel of any pixel (0-255); sizes must match."""
    assert first.size == second.size, f"sizes differ: {first.size} vs {second.size}"
    a = np.asarray(first.convert("RGB"), dtype=np.int16)
    b = np.asarray(second.convert("RGB"), dtype=np.int16)
    return int(np.abs(a - b).max())


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
