"""The model catalogue: every model the project serves, once, for all three programs.

The operator reads its resource defaults, the server its pipeline family and the rules a
request must keep, the gateway how a model fits a requested size. Adding a checkpoint of a
known family is a row here and the name in the CRD's `spec.model` enum (a test compares the
enum with this table); a new family is also a row of `FAMILIES` and its pipeline in the
server's backend.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

#: The names `spec.model` and the server's `--model` accept; the keys of `CATALOGUE`.
ModelName = Literal[
    "stub",
    "sdxl-turbo",
    "sdxl",
    "sd3.5-medium",
    "sd3.5-large",
    "sd3.5-large-turbo",
    "flux.1-schnell",
    "flux.1-dev",
]
FamilyName = Literal["stub", "sdxl", "sd3", "flux"]
#: What a model does with a request's negative prompt: use it, ignore it (as caikit's stub
#: does), or refuse it (a model with no negative conditioning at all, such as FLUX.1).
NegativePrompt = Literal["used", "ignored", "refused"]
#: What a model does with `guidance_scale`: classifier-free guidance (a second, unconditioned
#: pass when above 1), a distilled guidance embedding (FLUX.1-dev: one pass), or nothing
#: (distilled without guidance: FLUX.1-schnell).
Guidance = Literal["cfg", "embedded", "none"]


@dataclass(frozen=True)
class Family:
    """A diffusers pipeline class and what its checkpoints share."""

    name: FamilyName
    #: The `_class_name` a checkpoint's model_index.json must name; None: no weights.
    pipeline_class: str | None
    #: Each requested side goes to the nearest multiple of this (ties to even, never 0), as
    #: the caikit runtime's modules do: the VAE's 8, times 2 where the transformer packs
    #: 2x2 latent patches (SD3, FLUX.1); the stub draws any size.
    side_multiple: int
    negative_prompt: NegativePrompt


FAMILIES: dict[str, Family] = {
    "stub": Family("stub", None, side_multiple=1, negative_prompt="ignored"),
    "sdxl": Family("sdxl", "StableDiffusionXLPipeline", side_multiple=8, negative_prompt="used"),
    "sd3": Family("sd3", "StableDiffusion3Pipeline", side_multiple=16, negative_prompt="used"),
    "flux": Family("flux", "FluxPipeline", side_multiple=16, negative_prompt="refused"),
}


@dataclass(frozen=True)
class Resources:
    """A container's default requests and limits (Kubernetes quantities)."""

    requests: dict[str, str] = field(default_factory=dict)
    limits: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelEntry:
    name: ModelName
    family: FamilyName
    #: Hugging Face repository loaded when no weights source is given; None: needs no weights.
    default_repo: str | None
    #: The model cache's claim for those weights when neither the resource nor the operator
    #: names a size: the files the pipeline loads (16-bit) with room to spare.
    cache_size: str | None
    #: Device memory the model needs at its default size, batch 1, in 16-bit weights
    #: (weights from the published parameter counts, plus activations); docs/models.md.
    gpu_memory_gib: int
    #: Resource defaults for a replica on a GPU and on CPU alone; `spec.resources` wins. Host
    #: memory holds the weights while they load (twice as much on a CPU, which runs fp32).
    gpu_resources: Resources
    cpu_resources: Resources
    #: What a request that names no `num_steps` / `guidance_scale` gets.
    default_steps: int
    default_guidance: float
    #: Whether that repository is gated (a token from `huggingFace.tokenSecret` is needed).
    gated: bool = False
    #: GPUs per replica when `spec.gpus` is unset (a CRD default cannot depend on `model`).
    default_gpus: int = 1
    #: The most steps a request may ask (a server's `--max-steps` may lower it).
    max_steps: int = 100
    guidance: Guidance = "cfg"
    #: The largest `guidance_scale` accepted; None: any (caikit's modules set no bound).
    max_guidance: float | None = 20.0
    #: A request's side when it names none, and the largest (`--max-side` may lower it).
    default_size: int = 1024
    max_side: int = 2048
    #: Whether requests with the same size, steps and guidance share one pipeline call.
    batches: bool = True

    @property
    def side_multiple(self) -> int:
        return FAMILIES[self.family].side_multiple

    @property
    def negative_prompt(self) -> NegativePrompt:
        return FAMILIES[self.family].negative_prompt

    @property
    def pipeline_class(self) -> str | None:
        return FAMILIES[self.family].pipeline_class

    def resources(self, gpus: int) -> Resources:
        return self.gpu_resources if gpus > 0 else self.cpu_resources


def _host(request_gib: int, limit_gib: int, cpu: str) -> Resources:
    return Resources({"cpu": cpu, "memory": f"{request_gib}Gi"}, {"memory": f"{limit_gib}Gi"})


_STUB_RESOURCES = Resources({"cpu": "100m", "memory": "256Mi"}, {"memory": "1Gi"})
# SDXL in fp16: UNet 5.1 GB, text encoders 1.6 GB, VAE 0.2 GB; fp32 twice that.
_SDXL_GPU = _host(12, 24, "2")
_SDXL_CPU = _host(12, 24, "4")
_SDXL_CACHE = "24Gi"
# SD 3.5 in 16 bits: the T5-XXL encoder 9.5 GB and the CLIP pair 1.6 GB, plus the
# transformer: 4.9 GB (medium, 2.5 B parameters) or 16.3 GB (large, 8.1 B).
_SD35_MEDIUM_GPU = _host(20, 32, "2")
_SD35_MEDIUM_CPU = _host(36, 48, "4")
_SD35_LARGE_GPU = _host(32, 48, "2")
_SD35_LARGE_CPU = _host(60, 80, "4")
# FLUX.1 in bf16: the 12 B-parameter transformer 23.8 GB, T5-XXL 9.5 GB, CLIP and VAE 0.4 GB.
_FLUX_GPU = _host(40, 64, "2")
_FLUX_CPU = _host(72, 96, "4")

CATALOGUE: dict[str, ModelEntry] = {
    "stub": ModelEntry(
        name="stub",
        family="stub",
        default_repo=None,
        cache_size=None,
        gpu_memory_gib=0,
        default_gpus=0,
        gpu_resources=_STUB_RESOURCES,
        cpu_resources=_STUB_RESOURCES,
        default_steps=1,
        max_steps=50,
        guidance="none",
        default_guidance=0.0,
        max_guidance=None,
        default_size=512,
    ),
    "sdxl-turbo": ModelEntry(
        name="sdxl-turbo",
        family="sdxl",
        default_repo="stabilityai/sdxl-turbo",
        cache_size=_SDXL_CACHE,
        gpu_memory_gib=8,
        gpu_resources=_SDXL_GPU,
        cpu_resources=_SDXL_CPU,
        # Distilled for one to four steps without classifier-free guidance, at 512².
        default_steps=1,
        max_steps=50,
        default_guidance=0.0,
        max_guidance=None,
        default_size=512,
    ),
    "sdxl": ModelEntry(
        name="sdxl",
        family="sdxl",
        default_repo="stabilityai/stable-diffusion-xl-base-1.0",
        cache_size=_SDXL_CACHE,
        gpu_memory_gib=12,
        gpu_resources=_SDXL_GPU,
        cpu_resources=_SDXL_CPU,
        default_steps=30,
        default_guidance=5.0,
    ),
    "sd3.5-medium": ModelEntry(
        name="sd3.5-medium",
        family="sd3",
        default_repo="stabilityai/stable-diffusion-3.5-medium",
        gated=True,
        cache_size="32Gi",
        gpu_memory_gib=20,
        gpu_resources=_SD35_MEDIUM_GPU,
        cpu_resources=_SD35_MEDIUM_CPU,
        default_steps=40,
        default_guidance=4.5,
        max_side=1440,
    ),
    "sd3.5-large": ModelEntry(
        name="sd3.5-large",
        family="sd3",
        default_repo="stabilityai/stable-diffusion-3.5-large",
        gated=True,
        cache_size="48Gi",
        gpu_memory_gib=32,
        gpu_resources=_SD35_LARGE_GPU,
        cpu_resources=_SD35_LARGE_CPU,
        default_steps=28,
        default_guidance=3.5,
        max_side=1440,
    ),
    "sd3.5-large-turbo": ModelEntry(
        name="sd3.5-large-turbo",
        family="sd3",
        default_repo="stabilityai/stable-diffusion-3.5-large-turbo",
        gated=True,
        cache_size="48Gi",
        gpu_memory_gib=32,
        gpu_resources=_SD35_LARGE_GPU,
        cpu_resources=_SD35_LARGE_CPU,
        # Adversarially distilled: four steps without guidance.
        default_steps=4,
        max_steps=16,
        default_guidance=0.0,
        max_side=1440,
    ),
    "flux.1-schnell": ModelEntry(
        name="flux.1-schnell",
        family="flux",
        default_repo="black-forest-labs/FLUX.1-schnell",
        cache_size="48Gi",
        gpu_memory_gib=36,
        gpu_resources=_FLUX_GPU,
        cpu_resources=_FLUX_CPU,
        # Timestep-distilled: one to four steps, no guidance of any kind.
        default_steps=4,
        max_steps=8,
        guidance="none",
        default_guidance=0.0,
        max_guidance=0.0,
    ),
    "flux.1-dev": ModelEntry(
        name="flux.1-dev",
        family="flux",
        default_repo="black-forest-labs/FLUX.1-dev",
        gated=True,
        cache_size="48Gi",
        gpu_memory_gib=36,
        gpu_resources=_FLUX_GPU,
        cpu_resources=_FLUX_CPU,
        # Guidance-distilled: the scale is an input of the transformer, one pass per step.
        default_steps=28,
        guidance="embedded",
        default_guidance=3.5,
    ),
}


def request_rules(model: ModelEntry) -> dict[str, object]:
    """What a client may ask of `model`, as the server's `/info/models` and the gateway's
    `/v1/models` publish it (the playground's controls follow it)."""
    return {
        "family": model.family,
        "side_multiple": model.side_multiple,
        "default_size": model.default_size,
        "max_side": model.max_side,
        "default_steps": model.default_steps,
        "max_steps": model.max_steps,
        "guidance": model.guidance,
        "default_guidance": model.default_guidance,
        "max_guidance": model.max_guidance,
        "negative_prompt": model.negative_prompt,
    }


def entry(name: str) -> ModelEntry:
    """The catalogue entry of a model name already validated against `ModelName`."""
    return CATALOGUE[name]
