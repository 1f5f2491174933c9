"""The model catalogue: every model the project serves, once, for all three programs.

The operator reads its resource defaults, the server its request defaults and rules, the
gateway how a model fits a requested size. Adding a backend is a row here, its backend
module in the server, and the name in the CRD's `spec.model` enum (a test compares the
enum with this table).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: The names `spec.model` and the server's `--model` accept; the keys of `CATALOGUE`.
ModelName = Literal["stub", "sdxl-turbo"]


@dataclass(frozen=True)
class Resources:
    """A container's default requests and limits (Kubernetes quantities)."""

    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    name: ModelName
    #: Hugging Face repository loaded when no weights source is given; None: needs no weights.
    default_repo: str | None
    #: The model cache's claim for those weights when neither the resource nor the operator
    #: names a size: the weights the pods load (fp16 on a GPU, fp32 on a CPU) with room to spare.
    cache_size: str | None
    #: GPUs per replica when `spec.gpus` is unset (a CRD default cannot depend on `model`).
    default_gpus: int
    #: Resource defaults for a replica on a GPU and on CPU alone; `spec.resources` wins.
    gpu_resources: Resources
    cpu_resources: Resources
    #: What a request that names no `num_steps` / `guidance_scale` gets.
    default_steps: int
    default_guidance: float
    #: Whether the model uses a negative prompt (one that does not ignores it).
    negative_prompt: bool
    #: Each requested side goes to the nearest multiple of this (ties to even, never 0), as
    #: the caikit runtime's modules do: SDXL's VAE needs multiples of 8, the stub draws any.
    side_multiple: int

    def resources(self, gpus: int) -> Resources:
        return self.gpu_resources if gpus > 0 else self.cpu_resources


_STUB_RESOURCES = Resources({"cpu": "100m", "memory": "256Mi"}, {"memory": "1Gi"})

CATALOGUE: dict[str, ModelEntry] = {
    "stub": ModelEntry(
        name="stub",
        default_repo=None,
        cache_size=None,
        default_gpus=0,
        gpu_resources=_STUB_RESOURCES,
        cpu_resources=_STUB_RESOURCES,
        default_steps=1,
        default_guidance=0.0,
        negative_prompt=False,
        side_multiple=1,
    ),
    "sdxl-turbo": ModelEntry(
        name="sdxl-turbo",
        default_repo="stabilityai/sdxl-turbo",
        # fp16: UNet 5.1 GB, text encoders 1.6 GB, VAE 0.2 GB; fp32 twice that.
        cache_size="24Gi",
        default_gpus=1,
        gpu_resources=Resources({"cpu": "2", "memory": "12Gi"}, {"memory": "24Gi"}),
        cpu_resources=Resources({"cpu": "4", "memory": "12Gi"}, {"memory": "24Gi"}),
        # SDXL-Turbo was distilled for one step without classifier-free guidance.
        default_steps=1,
        default_guidance=0.0,
        negative_prompt=True,
        side_multiple=8,
    ),
}


def entry(name: str) -> ModelEntry:
    """The catalogue entry of a model name already validated against `ModelName`."""
    return CATALOGUE[name]
