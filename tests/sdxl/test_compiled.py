"""Compilation ahead of serving, without compiling: the cache's key, the dispatch between
compiled and eager calls, the atomic write of the artefacts, and every setting refused
before a weight is read (CUDA graphs on a CPU, the stub, `compile` as a speed-up)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import torch

from tti_server.backends.base import ModelLoadError, Speedups
from tti_server.backends.compiled import (
    ShapeDispatch,
    cache_key,
    device_slug,
    write_atomically,
)
from tti_server.backends.loading import compile_plan, load_backends
from tti_server.settings import Settings


def test_the_key_names_what_invalidates_the_graphs() -> None:
    key = cache_key("2.15.0+cpu", "cpu", "float32", "compile", 4, 512, 512)
    assert key == "torch-2.15.0+cpu.cpu.float32.compile.b1-4.512x512"
    gpu = device_slug("NVIDIA H100 80GB HBM3", (9, 0))
    assert gpu == "nvidia-h100-80gb-hbm3-sm90"
    assert (
        cache_key("2.11.0+cu130", gpu, "float16", "compile-cudagraphs", 8, 1024, 1024)
        == "torch-2.11.0+cu130.nvidia-h100-80gb-hbm3-sm90.float16.compile-cudagraphs.b1-8.1024x1024"
    )


class Recorder:
    """A callable that notes each call's first argument's shape."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, sample: torch.Tensor, scale: float = 1.0, **_: Any) -> torch.Tensor:
        self.shapes.append(tuple(sample.shape))
        return sample * scale


def test_after_the_warm_up_only_its_shapes_run_compiled_and_any_other_runs_eager() -> None:
    eager, compiled = Recorder(), Recorder()
    dispatch = ShapeDispatch(eager, compiled)
    for batch in (1, 2):  # the warm-up: every call compiles, and is remembered
        dispatch(torch.zeros(batch, 4, 8, 8))
    dispatch.seal()
    dispatch(torch.zeros(2, 4, 8, 8))
    dispatch(torch.zeros(3, 4, 8, 8))  # a batch size past the warm-up's
    dispatch(torch.zeros(1, 4, 16, 16))  # another image size
    dispatch(torch.zeros(1, 4, 8, 8), scale=0.5)  # a value the graph would specialise on
    dispatch(torch.zeros(1, 4, 8, 8, dtype=torch.float16))
    assert compiled.shapes == [(1, 4, 8, 8), (2, 4, 8, 8), (2, 4, 8, 8)]
    assert eager.shapes == [(3, 4, 8, 8), (1, 4, 16, 16), (1, 4, 8, 8), (1, 4, 8, 8)]


def test_the_dispatch_keeps_the_methods_signature_for_pipelines_that_inspect_it() -> None:
    module = torch.nn.Linear(2, 2)
    dispatch = ShapeDispatch(module.forward, module.forward)
    assert inspect.signature(dispatch) == inspect.signature(module.forward)


def test_the_artefacts_are_written_whole_with_nothing_left_beside_them(tmp_path: Path) -> None:
    path = tmp_path / "artifacts.bin"
    write_atomically(path, b"first")
    write_atomically(path, b"second")
    assert path.read_bytes() == b"second"
    assert [p.name for p in tmp_path.iterdir()] == ["artifacts.bin"]


def test_the_warm_up_is_the_servers_batch_sizes_at_its_default_size_and_the_models_defaults(
    tmp_path: Path,
) -> None:
    settings = Settings(
        model="sdxl-turbo",
        optimisation="compile",
        compile_cache_dir=str(tmp_path),
        max_batch_size=3,
        default_size=64,
    )
    plan = compile_plan(settings)
    assert (plan.cache_root, plan.max_batch_size, plan.size) == (tmp_path, 3, 64)
    assert (plan.steps, plan.guidance) == (1, 0.0)  # sdxl-turbo's
    odd = settings.model_copy(update={"default_size": 69})
    assert compile_plan(odd).size == 72  # what a request naming no size gets


def test_the_cache_defaults_to_the_users_cache_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert Settings().resolved_compile_cache_dir == tmp_path / "tti" / "compile"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert Settings().resolved_compile_cache_dir == Path.home() / ".cache" / "tti" / "compile"


REFUSED = [
    pytest.param(
        {"model": "sdxl-turbo", "device": "cpu", "optimisation": "compile-cudagraphs"},
        "--optimisation compile-cudagraphs needs a CUDA device and this pod has none; use compile",
        id="cuda-graphs-on-a-cpu",
    ),
    pytest.param(
        {"model": "stub", "optimisation": "compile"},
        "--optimisation compile: the stub model has nothing to compile; use none",
        id="stub",
    ),
    pytest.param(
        {"model": "sdxl-turbo", "sdxl_speedups": "channels_last,compile"},
        "--sdxl-speedups: compile is not a speed-up; use --optimisation compile",
        id="compile-as-a-speed-up",
    ),
]


@pytest.mark.parametrize(("settings", "line"), REFUSED)
def test_a_setting_that_cannot_work_is_refused_in_one_line_before_any_weight_is_read(
    settings: dict[str, Any], line: str, tmp_path: Path
) -> None:
    # No model at the path: a refusal that came after reading weights would say so instead.
    with pytest.raises(ModelLoadError) as raised:
        load_backends(Settings(model_path=str(tmp_path / "no-model"), **settings))
    assert str(raised.value) == line


def test_compile_is_no_longer_a_speed_up() -> None:
    assert Speedups.parse("channels_last,fuse_qkv") == Speedups(True, True)
    with pytest.raises(ValueError, match="use --optimisation compile"):
        Speedups.parse("compile")
