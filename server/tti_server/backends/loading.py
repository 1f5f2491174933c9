"""Turn settings into loaded backends, one per worker device.

This is the only place that decides devices. torch is imported lazily, and only
for a model with weights, so the stub server (and the HTTP layer) never pays for it.
"""

from __future__ import annotations

from tti_server.backends.base import Backend, ModelLoadError
from tti_server.backends.stub import StubBackend
from tti_server.settings import Settings


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
    """Load the model once per worker device (slow for real models: call it off the loop)."""
    if settings.model == "stub":
        latency_s = settings.stub_latency_ms / 1000
        return [StubBackend("cpu", latency_s) for _ in range(settings.workers)]
    from tti_server.backends.diffusion import Speedups, load_pipeline

    try:
        speedups = Speedups.parse(settings.sdxl_speedups)
    except ValueError as exc:
        raise ModelLoadError(f"--sdxl-speedups: {exc}") from None
    path, model = settings.resolved_model_path, settings.catalogue_entry
    return [
        load_pipeline(path, device, speedups, model=model) for device in worker_devices(settings)
    ]
