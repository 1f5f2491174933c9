"""pytest plugin: the tiny random-weight pipelines, written once per session.

`tiny_model_dir` is the SDXL diffusers directory, `tiny_caikit_dir` the same model
as the seed's caikit module saves one, `tiny_backend` the model loaded on the CPU,
and `tiny_family_dirs` one directory per family of `FAMILIES` (SDXL's is
`tiny_model_dir`). They are written with no network and the same fixed seed, so
every run sees the same weights. `pixel_difference` compares images where float
noise may differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tti_server.backends.diffusion import DiffusionBackend, load_pipeline
from tti_server.tools.tiny_model import FAMILIES, write_tiny_caikit_model, write_tiny_model


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
