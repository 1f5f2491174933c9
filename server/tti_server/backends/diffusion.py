"""The diffusers backend: one pipeline of a catalogue family on one device.

One backend serves every family of the catalogue (SDXL, Stable Diffusion 3, FLUX.1); what
differs between them is data, `HANDLING` below and the catalogue's `Family` rows.

`load_pipeline` accepts what users have: a diffusers directory, a model directory saved
by the seed's caikit module (a `config.yml` whose `sdxl_model` key names the
pipeline sub-folder), or a Hugging Face repo id, and refuses a checkpoint of another
family, naming both. Whatever fails, it raises `ModelLoadError` with one line saying
what it tried.

`DiffusionBackend.generate` runs a batch of compatible requests as one pipeline call
with one seeded generator per image, so a seeded request gets the same images
whether it ran alone or batched with others. For SDXL the pipeline stops at the latents
and the backend decodes them itself with the VAE in the dtype `vae_dtype` chose at
load time (see there why), which diffusers' pipeline cannot do; the other families'
VAEs run in the pipeline's own dtype, and their pipelines decode. A batch whose requests
ask for partial images gets a step callback that projects their rows (`previews.py`).
Each batch runs with the LoRA adapter its key names, or none (`adapters.py`).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import secrets
import socket
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import yaml
from PIL import Image

from tti_contracts.catalogue import CATALOGUE, FAMILIES, ModelEntry
from tti_server.backends.adapters import AdapterSlots
from tti_server.backends.base import (
    AdapterFile,
    BackendOutOfMemory,
    GenerationRequest,
    ModelLoadError,
    Speedups,
)
from tti_server.backends.previews import LATENT_RGB, PreviewCallback

#: The key under which the seed's caikit module records the pipeline sub-folder.
CAIKIT_PIPELINE_KEY = "sdxl_model"
_CAIKIT_CONFIG = "config.yml"
_DIFFUSERS_INDEX = "model_index.json"
_HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SEED_SPACE = 1 << 64  # torch.Generator.manual_seed takes 64-bit seeds


@dataclass(frozen=True)
class Handling:
    """How a family's pipeline runs on CUDA (on a CPU everything is fp32)."""

    #: The weights' dtype where the GPU has native bf16; `fallback` elsewhere.
    cuda_dtype: torch.dtype
    fallback: torch.dtype
    #: Whether the backend decodes the latents itself (SDXL's VAE overflows fp16: see
    #: `vae_dtype`), rather than the pipeline in its own dtype.
    own_decode: bool


HANDLING: dict[str, Handling] = {
    # fp16 with the fp16 weight variant the SDXL repositories ship.
    "sdxl": Handling(torch.float16, torch.float16, own_decode=True),
    # Trained and published in bf16; their T5 encoder overflows fp16 on long prompts.
    "sd3": Handling(torch.bfloat16, torch.float16, own_decode=False),
    "flux": Handling(torch.bfloat16, torch.float16, own_decode=False),
}


@dataclass(frozen=True)
class PipelineSource:
    """Where the pipeline comes from, and how to name that in an error."""

    location: str
    local: bool
    description: str


class DiffusionBackend:
    """A loaded diffusers pipeline on one device; only its worker thread calls it."""

    def __init__(self, pipeline: Any, device: str, model: ModelEntry) -> None:
        self.pipeline = pipeline
        self.device = device
        self.name: str = model.name
        self.handling = HANDLING[model.family]
        self.side_multiple = model.side_multiple
        self.latent_rgb = LATENT_RGB[model.family]
        self.adapters = AdapterSlots(pipeline)

    def update_adapters(self, delete: list[str], load: list[AdapterFile]) -> dict[str, str]:
        """Delete, then load LoRA adapters (between batches, on the worker thread)."""
        return self.adapters.update(delete, load)

    def generate(self, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
        """Run `batch` as one pipeline call and hand each request exactly its `n` images."""
        key = batch[0].key
        if any(request.key != key for request in batch):
            raise ValueError("every request of a batch must share one BatchKey")
        multiple = self.side_multiple
        if key.height % multiple or key.width % multiple:
            # The server rounds sizes as the seed does; a backend never guesses.
            raise ValueError(
                f"height and width must be multiples of {multiple}, got {key.height}x{key.width}"
            )
        prompts = [request.prompt for request in batch for _ in range(request.n)]
        generators = [_generator(seed) for request in batch for seed in image_seeds(request)]
        previews = PreviewCallback.for_batch(batch, self.latent_rgb)
        self.adapters.select(key.adapter, key.adapter_scale)
        try:
            with torch.inference_mode():
                output = self.pipeline(
                    prompt=prompts,
                    negative_prompt=(
                        [key.negative_prompt] * len(prompts) if key.negative_prompt else None
                    ),
                    height=key.height,
                    width=key.width,
                    num_inference_steps=key.num_steps,
                    guidance_scale=key.guidance_scale,
                    generator=generators,
                    output_type="latent" if self.handling.own_decode else "pil",
                    callback_on_step_end=previews,
                    callback_on_step_end_tensor_inputs=["latents"],
                ).images
                images = (
                    to_pil(self.pipeline, decode_latents(self.pipeline, output))
                    if self.handling.own_decode
                    else list(output)
                )
        except torch.cuda.OutOfMemoryError as exc:
            raise BackendOutOfMemory(
                f"{self.device} ran out of memory for {len(prompts)} image(s) of "
                f"{key.width}x{key.height}"
            ) from exc
        return split_per_request(images, [request.n for request in batch])

    def release_memory(self) -> None:
        """Return the CUDA caching allocator's free blocks after a failed batch."""
        if not self.device.startswith("cuda"):
            return
        gc.collect()  # the failed batch's tensors may still sit in a traceback's frames
        with torch.cuda.device(self.device):
            torch.cuda.empty_cache()


def load_pipeline(
    model_path: str,
    device: str,
    speedups: Speedups | None = None,
    *,
    model: ModelEntry = CATALOGUE["sdxl-turbo"],
) -> DiffusionBackend:
    """Load the pipeline of `model`'s family (the seed's SDXL-Turbo unless told) at
    `model_path` onto `device` (`cpu`, `cuda`, `cuda:N`).

    CUDA gets the family's dtype (`HANDLING`; the `fp16` weight variant when there is one
    and the dtype is fp16); SDXL's VAE stays for good in the dtype `vae_dtype` picks (bf16
    or fp32, as it overflows fp16). CPU gets fp32. Raises `ModelLoadError` with one line.
    """
    handling = HANDLING[model.family]
    source = resolve_source(model_path)
    on_cuda = device.startswith("cuda")
    bf16 = on_cuda and _cuda_has_bf16(device)
    dtype = (handling.cuda_dtype if bf16 else handling.fallback) if on_cuda else torch.float32
    pipeline = _from_pretrained(source, dtype, dtype == torch.float16, model)
    check_family(type(pipeline).__name__, source, model)  # a hub repository's, once loaded
    try:
        pipeline = pipeline.to(device)
        if handling.own_decode:
            force_upcast = bool(getattr(pipeline.vae.config, "force_upcast", True))
            kept = vae_dtype(device, force_upcast=force_upcast, bf16_supported=bf16)
            cast_vae(pipeline.vae, kept)
    except Exception as exc:
        raise ModelLoadError(
            f"loaded {source.description} but cannot move it to {device}: {one_line(exc)}"
        ) from exc
    # A progress bar per request would flood the server's log.
    pipeline.set_progress_bar_config(disable=True)
    _apply_speedups(pipeline, speedups or Speedups())
    return DiffusionBackend(pipeline, device, model)


def vae_dtype(device: str, *, force_upcast: bool, bf16_supported: bool) -> torch.dtype:
    """The dtype the VAE is kept in for good: chosen once at load, never converted per call.

    SDXL's VAE overflows fp16 (its config says `force_upcast`). diffusers' fp16
    pipeline copes by converting the whole VAE to fp32 before every decode and back
    to fp16 after it: two conversions of its weights per call, then an fp32 decode.
    Instead the VAE stays in bf16 where the GPU has it (fp32's exponent range, so
    nothing overflows, at half precision's speed), else in fp32. A VAE whose config
    declares fp16 safe (`force_upcast: false`, as sdxl-vae-fp16-fix ships) keeps
    fp16, the pipeline's dtype. Off CUDA everything is fp32.
    """
    if not device.startswith("cuda"):
        return torch.float32
    if not force_upcast:
        return torch.float16
    return torch.bfloat16 if bf16_supported else torch.float32


def cast_vae(vae: Any, dtype: torch.dtype) -> None:
    """Convert the VAE to `dtype` once, without diffusers' empty warning."""
    if vae.dtype == dtype:
        return
    if getattr(vae, "_keep_in_fp32_modules", None):  # modules that must stay fp32: let it warn
        vae.to(dtype=dtype)
        return
    # diffusers warns on every dtype cast of a model, even one with no modules to keep
    # in fp32 (AutoencoderKL has none): a warning with nothing behind it.
    modeling_logger = logging.getLogger("diffusers.models.modeling_utils")
    level = modeling_logger.level
    modeling_logger.setLevel(logging.ERROR)
    try:
        vae.to(dtype=dtype)
    finally:
        modeling_logger.setLevel(level)


def decode_latents(pipeline: Any, latents: torch.Tensor) -> torch.Tensor:
    """The pipeline's latents as an fp32 image tensor in [-1, 1], as diffusers decodes them.

    The same steps as the end of diffusers' SDXL `__call__` (unscaling, with the VAE
    config's `latents_mean`/`latents_std` when it has them; the watermark when the
    pipeline has a watermarker), except that the latents are cast to the VAE's dtype
    rather than the VAE to theirs.
    """
    vae = pipeline.vae
    config = vae.config
    latents = latents.float()  # unscale at full precision whatever the VAE's dtype
    mean = getattr(config, "latents_mean", None)
    std = getattr(config, "latents_std", None)
    if mean is not None and std is not None:
        mean_t = torch.tensor(mean, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=latents.dtype, device=latents.device).view(1, -1, 1, 1)
        latents = latents * std_t / config.scaling_factor + mean_t
    else:
        latents = latents / config.scaling_factor
    decoded: torch.Tensor = vae.decode(latents.to(vae.device, vae.dtype), return_dict=False)[0]
    # fp32 before anything rounds: postprocessing in bf16 would cost precision, and
    # the watermarker goes through numpy, which has no bf16.
    images = decoded.float()
    watermark = getattr(pipeline, "watermark", None)
    if watermark is not None:
        images = watermark.apply_watermark(images)
    return images


def to_pil(pipeline: Any, images: torch.Tensor) -> list[Image.Image]:
    """An image tensor in [-1, 1] as PIL images, with the pipeline's own image processor."""
    return list(pipeline.image_processor.postprocess(images, output_type="pil"))


def resolve_source(model_path: str) -> PipelineSource:
    """Decide what `model_path` is: a diffusers dir, a caikit model dir or a hub repo id."""
    path = Path(model_path).expanduser()
    if path.is_dir():
        if (path / _CAIKIT_CONFIG).is_file():
            return _caikit_source(path)
        if (path / _DIFFUSERS_INDEX).is_file():
            return PipelineSource(str(path), True, f"diffusers directory {path}")
        raise ModelLoadError(
            f"{path} is neither a diffusers pipeline (no {_DIFFUSERS_INDEX}) "
            f"nor a caikit model (no {_CAIKIT_CONFIG})"
        )
    if path.exists():
        raise ModelLoadError(f"model path {path} is a file, not a model directory")
    if _HUB_REPO_ID.match(model_path) and ".." not in model_path:
        return _hub_source(model_path)
    raise ModelLoadError(f"model directory {path} does not exist")


def image_seeds(request: GenerationRequest) -> list[int]:
    """One seed per image: `seed, seed+1, ...`; a random start when the request has none."""
    start = secrets.randbits(63) if request.seed is None else request.seed
    return [(start + index) % _SEED_SPACE for index in range(request.n)]


def split_per_request(images: list[Image.Image], counts: list[int]) -> list[list[Image.Image]]:
    """Cut the flat list of a pipeline call back into each request's images, in order."""
    if len(images) != sum(counts):
        raise RuntimeError(f"the pipeline returned {len(images)} images for {sum(counts)} asked")
    result: list[list[Image.Image]] = []
    start = 0
    for count in counts:
        result.append(images[start : start + count])
        start += count
    return result


def one_line(exc: BaseException) -> str:
    """An exception as one short line: its type and the first line of its message."""
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _cuda_has_bf16(device: str) -> bool:
    # Native bf16 only (compute capability 8.0 on): older GPUs merely emulate it,
    # and fp32 is the plain, safe choice there.
    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))


def _generator(seed: int) -> torch.Generator:
    # CPU generators draw the same noise whatever the device, so a seed gives the
    # same image on every worker of a pod; the noise is tiny next to the UNet.
    return torch.Generator(device="cpu").manual_seed(seed)


def _caikit_source(path: Path) -> PipelineSource:
    config_path = path / _CAIKIT_CONFIG
    try:
        config = yaml.safe_load(config_path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ModelLoadError(f"cannot read caikit config {config_path}: {one_line(exc)}") from exc
    subfolder = config.get(CAIKIT_PIPELINE_KEY) if isinstance(config, dict) else None
    if not isinstance(subfolder, str) or not subfolder:
        raise ModelLoadError(
            f"caikit config {config_path} has no `{CAIKIT_PIPELINE_KEY}` key naming "
            "the pipeline sub-folder"
        )
    pipeline_dir = path / subfolder
    if not (pipeline_dir / _DIFFUSERS_INDEX).is_file():
        raise ModelLoadError(
            f"caikit config {config_path} names {CAIKIT_PIPELINE_KEY}: {subfolder}, "
            f"but {pipeline_dir} holds no diffusers pipeline ({_DIFFUSERS_INDEX})"
        )
    return PipelineSource(
        str(pipeline_dir), True, f"caikit model {path} ({CAIKIT_PIPELINE_KEY}: {subfolder})"
    )


def _hub_source(repo_id: str) -> PipelineSource:
    tried = f"Hugging Face repo {repo_id} (no local directory of that name)"
    if _hub_reachable():
        return PipelineSource(repo_id, False, tried)
    # Offline, the hub client retries for half a minute before failing; a model
    # already in the local cache loads without it.
    return PipelineSource(repo_id, True, f"{tried} from the local cache only (offline)")


def _hub_reachable() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes", "on"}:
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.getaddrinfo(host or "huggingface.co", 443)
    except OSError:
        return False
    return True


def _from_pretrained(
    source: PipelineSource, dtype: torch.dtype, want_fp16_variant: bool, model: ModelEntry
) -> Any:
    from diffusers import AutoPipelineForText2Image

    directory = Path(source.location)
    on_disk = source.local and directory.is_dir()
    if on_disk:
        check_family(_check_model_index(directory, source), source, model)
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": source.local}
    error: Exception | None = None
    for variant in _variants_to_try(directory if on_disk else None, want_fp16_variant):
        try:
            with warnings.catch_warnings():
                # diffusers still passes an argument huggingface_hub deprecated.
                warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks")
                return AutoPipelineForText2Image.from_pretrained(
                    source.location, variant=variant, **kwargs
                )
        except Exception as exc:  # any failure here means "this model does not load"
            error = exc
    assert error is not None
    raise ModelLoadError(f"cannot load {source.description}: {one_line(error)}") from error


def _check_model_index(directory: Path, source: PipelineSource) -> str:
    """The pipeline class model_index.json names; fails early, and clearly, on the most
    common corruption: a broken model_index.json."""
    index_path = directory / _DIFFUSERS_INDEX
    try:
        index = json.loads(index_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(
            f"cannot load {source.description}: {index_path} is not valid JSON ({one_line(exc)})"
        ) from exc
    if not isinstance(index, dict) or "_class_name" not in index:
        raise ModelLoadError(
            f"cannot load {source.description}: {index_path} names no pipeline class"
        )
    return str(index["_class_name"])


def check_family(pipeline_class: str, source: PipelineSource, model: ModelEntry) -> None:
    """Refuse a checkpoint of another family, naming both, before its weights are read
    when it is on disk (the larger families' weights take minutes to read)."""
    expected = FAMILIES[model.family].pipeline_class
    if pipeline_class != expected:
        raise ModelLoadError(
            f"{source.description} is a {pipeline_class} checkpoint, but {model.name} is of "
            f"the {model.family} family, which loads {expected}"
        )


def _variants_to_try(directory: Path | None, want_fp16: bool) -> list[str | None]:
    """Weight variants to try, preferred first: a repo may hold fp16 files, plain ones or both."""
    if directory is None:  # a hub repo: the listing is not known before trying
        return ["fp16", None] if want_fp16 else [None]
    if not _has_fp16_variant(directory):
        return [None]
    return ["fp16", None] if want_fp16 else [None, "fp16"]


def _has_fp16_variant(directory: Path) -> bool:
    return any(directory.glob("*/*.fp16.safetensors")) or any(directory.glob("*/*.fp16.bin"))


def _apply_speedups(pipeline: Any, speedups: Speedups) -> None:
    if speedups.fuse_qkv:
        pipeline.fuse_qkv_projections()
    if speedups.channels_last:
        # Convolutions gain from it; a transformer's linear layers do not care.
        for name in ("unet", "vae"):
            if hasattr(pipeline, name):
                getattr(pipeline, name).to(memory_format=torch.channels_last)
