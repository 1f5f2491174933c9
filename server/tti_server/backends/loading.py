"""Turn settings into loaded backends, one per worker device, each compiled ahead of serving
when `--optimisation` asks (`compiled.py`), so the service is ready only once it is.

This is the only place that decides devices. torch is imported lazily, and only
for a model with weights, so the stub server (and the HTTP layer) never pays for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tti_server.backends.base import Backend, ModelLoadError
from tti_server.backends.stub import StubBackend
from tti_server.settings import Settings

if TYPE_CHECKING:
    from tti_server.backends.compiled import CompilePlan


def cuda_device_count() -> int:
    """How many CUDA devices this process sees (0 without torch or without CUDA)."""
    try:
        import torch
    except ImportError:
        return 0
    return int(torch.cuda.device_count()) if torch.cuda.is_available() else 0


def worker_devices(settings: Settings) -> list[str]:
    """One worker per visible CUDA device, else `--workers` CPU workers."""
    if settings.device != "cpu":
        count = cuda_device_count()
        if count:
            return [f"cuda:{index}" for index in range(count)]
        if settings.device == "cuda":
            raise ModelLoadError("--device cuda was asked for but no CUDA device is visible")
    return ["cpu"] * settings.workers


def load_backends(settings: Settings) -> list[Backend]:
    """Load the model once per worker device, compiled ahead when the settings say so
    (slow for real models, minutes to compile: call it off the loop)."""
    if settings.model == "stub":
        if settings.optimisation != "none":
            raise ModelLoadError(
                f"--optimisation {settings.optimisation}: the stub model has nothing to "
                "compile; use none"
            )
        latency_s = settings.stub_latency_ms / 1000
        return [StubBackend("cpu", latency_s) for _ in range(settings.workers)]
    from tti_server.backends import compiled
    from tti_server.backends.base import Speedups
    from tti_server.backends.diffusion import load_pipeline

    try:
        speedups = Speedups.parse(settings.sdxl_speedups)
    except ValueError as exc:
        raise ModelLoadError(f"--sdxl-speedups: {exc}") from None
    devices = worker_devices(settings)
    path, model = settings.resolved_model_path, settings.catalogue_entry
    if settings.optimisation == "none":
        return [load_pipeline(path, device, speedups, model=model) for device in devices]
    compiled.check_devices(settings.optimisation, devices)
    # Each worker's pipeline is compiled for each batch size: dynamo keeps them all.
    compiled.raise_recompile_limit(settings.max_batch_size * len(devices))
    plan = compile_plan(settings)
    backends: list[Backend] = []
    for device in devices:
        backend = load_pipeline(path, device, speedups, model=model)
        compiled.compile_ahead(backend, plan)
        backends.append(backend)
    return backends


def compile_plan(settings: Settings) -> CompilePlan:
    """The shapes to compile for: the server's batch sizes at its default size, with the
    model's default steps and guidance (which decides whether CFG doubles the batch)."""
    from tti_server.backends.compiled import CompilePlan
    from tti_server.generation import fitted_side

    model = settings.catalogue_entry
    return CompilePlan(
        optimisation=settings.optimisation,
        cache_root=settings.resolved_compile_cache_dir,
        max_batch_size=settings.max_batch_size,
        # The size a request that names none gets: the default, rounded as requests are.
        size=fitted_side(settings.side_when_unnamed, model.side_multiple),
        steps=model.default_steps,
        guidance=model.default_guidance,
    )
