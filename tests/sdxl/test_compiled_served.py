"""`tti-server --optimisation compile` with the tiny model, started twice on one compile cache:
the first start compiles everything and leaves the keyed directory; the second takes every
graph from it, and serves. The one test that compiles for real: Inductor on the CPU takes
about 100 s for the tiny model at batch size 1."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
import torch
from support.server import ServerProcess, launch_server

from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE as CAIKIT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

#: The log line of `tti_server.backends.compiled`, in the shape the contract fixes.
COMPILED = re.compile(
    r"compiled unet and vae\.decode for batch sizes 1-1 at 64x64 in [0-9.]+ s "
    r"\(from the cache: (\d+) of (\d+) graphs\) into (\S+)$",
    re.MULTILINE,
)
#: A first start compiles for minutes on a shared CPU; the second is quick, but not timed.
READY_S = 600.0


def start(model_dir: Path, cache_dir: Path, logs: Path) -> ServerProcess:
    flags = ["--model", "sdxl-turbo", "--model-path", str(model_dir), "--device", "cpu"]
    flags += ["--optimisation", "compile", "--compile-cache-dir", str(cache_dir)]
    flags += ["--max-batch-size", "1", "--default-size", "64", "--grpc-port", "0"]
    return launch_server(flags, logs, ready_timeout=READY_S)


def compiled_line(server: ServerProcess) -> tuple[int, int, Path]:
    lines = COMPILED.findall(server.output())
    assert len(lines) == 1, server.output()[-3000:]
    hits, graphs, directory = lines[0]
    return int(hits), int(graphs), Path(directory)


def test_a_second_start_takes_every_graph_from_the_first_starts_cache(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "compile"
    first = start(tiny_model_dir, cache_dir, tmp_path / "first")
    try:
        hits, graphs, directory = compiled_line(first)
    finally:
        first.stop()
    assert hits == 0 and graphs > 0
    assert directory.parent == cache_dir
    assert directory.name == f"torch-{torch.__version__}.cpu.float32.compile.b1-1.64x64"
    assert {p.name for p in directory.iterdir()} >= {"artifacts.bin", "inductor", "triton"}

    second = start(tiny_model_dir, cache_dir, tmp_path / "second")
    try:
        assert compiled_line(second) == (graphs, graphs, directory)
        cached = files_under(directory)
        for size in (64, 128):  # compiled; then a size the warm-up did not see: eager
            parameters = {"seed": 1, "height": size, "width": size}
            body = {"model_id": "sdxl-turbo", "inputs": "a lighthouse", "parameters": parameters}
            response = httpx.post(second.url + CAIKIT, json=body, timeout=120)
            assert response.status_code == 200, response.text
            assert response.json()["output"]["image_data"]
        assert files_under(directory) == cached  # nothing was compiled for a request
    finally:
        second.stop()


def files_under(directory: Path) -> set[Path]:
    return {path for path in directory.rglob("*") if path.is_file()}
