"""pytest plugin: the tiny random-weight SDXL pipeline, written once per session.

`tiny_model_dir` is a diffusers directory, `tiny_caikit_dir` the same model as the
seed's caikit module saves one, `tiny_backend` the model loaded on the CPU. They
are written with no network and the same fixed seed, so every run sees the same
weights. `pixel_difference` compares images where float noise may differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tti_server.backends.diffusion import DiffusionBackend, load_pipeline
from tti_server.tools.tiny_model import write_tiny_caikit_model, write_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tiny-sdxl") / "pipeline"
    write_tiny_model(path)
    return path


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
