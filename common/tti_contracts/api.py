"""The TextToImageModel API: its group, version and names, and the spec fields every
program reads raw (before or without the operator's typed parse)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

GROUP = "tti.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "TextToImageModel"
PLURAL = "texttoimagemodels"
#: `/apis/tti.dev/v1alpha1`: the prefix of every path of the API.
API_PREFIX = f"/apis/{API_VERSION}"

ImageFormat = Literal["png", "jpeg", "webp"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = get_args(ImageFormat)

#: `spec.optimisation` and the server's `--optimisation`: how the denoiser and the VAE
#: decoder run. `compile`: torch.compile for every batch size up to the maximum, before the
#: pod is ready, cached with the weights; `compile-cudagraphs`: the same, replayed as CUDA
#: graphs (a GPU only).
Optimisation = Literal["none", "compile", "compile-cudagraphs"]
OPTIMISATIONS: tuple[Optimisation, ...] = get_args(Optimisation)
#: The settings that need a CUDA device: refused for a model of no GPUs.
GPU_ONLY_OPTIMISATIONS: frozenset[Optimisation] = frozenset({"compile-cudagraphs"})

#: `spec.replicas` when the resource leaves it out (the CRD's default).
DEFAULT_REPLICAS = 1


def models_path(namespace: str | None) -> str:
    """The collection of models in `namespace` (None: every namespace)."""
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"{API_PREFIX}{where}/{PLURAL}"


def model_path(namespace: str, name: str, subresource: str = "") -> str:
    """One model, or one of its subresources (`status`, `scale`)."""
    return f"{models_path(namespace)}/{name}" + (f"/{subresource}" if subresource else "")


def declared_replicas(spec: Mapping[str, Any]) -> int:
    """`spec.replicas` as written, for readers that do not parse the whole spec (the
    gateway, the autoscaler, status of a spec that does not parse); the CRD's default
    when it is missing or not a count."""
    replicas = spec.get("replicas", DEFAULT_REPLICAS)
    valid = isinstance(replicas, int) and not isinstance(replicas, bool) and replicas >= 0
    return replicas if valid else DEFAULT_REPLICAS
