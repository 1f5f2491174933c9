"""Partial images while a batch denoises: the latents projected straight to RGB.

A preview is the current latents times a per-family 3-column matrix plus a bias (the
`latent_rgb_factors` that ComfyUI's `comfy/latent_formats.py` publishes and image tools
use for live previews), fitted once so that each latent channel's contribution
approximates the VAE's colours. It costs one 4x3 or 16x3 matrix product per latent pixel
(an eighth of the image's side), on the worker's thread while the whole batch waits;
the VAE's decoder would cost a network's pass there (24 ms per 512x512 image on an H100,
a third of an SDXL step: docs/benchmarks.md), once per preview. The price is a soft,
slightly off-colour picture at an eighth of the resolution, which the server scales up:
enough to watch the composition form, which is what a preview is for.

The factors apply to the latents as the denoiser sees them (diffusers' pipeline latents
are ComfyUI's scaled latents for all three families). An Euler scheduler's latents
still carry noise of standard deviation sigma: `scale_model_input` brings them back to
unit variance, as it does for the denoiser's input, or early previews would be white
noise. FLUX.1's pipeline packs 2x2 latent patches into a sequence; they are unpacked
first. Nothing here changes the latents: a streamed image is the same, byte for byte, as
one generated without previews.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from tti_server.backends.base import GenerationRequest

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class LatentRGB:
    """One RGB row per latent channel, and the bias added after."""

    factors: tuple[RGB, ...]
    bias: RGB


# From ComfyUI's comfy/latent_formats.py (SDXL, SD3, Flux).
SDXL = LatentRGB(
    factors=(
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    bias=(0.1084, -0.0175, -0.0011),
)
SD3 = LatentRGB(
    factors=(
        (-0.0922, -0.0175, 0.0749),
        (0.0311, 0.0633, 0.0954),
        (0.1994, 0.0927, 0.0458),
        (0.0856, 0.0339, 0.0902),
        (0.0587, 0.0272, -0.0496),
        (-0.0006, 0.1104, 0.0309),
        (0.0978, 0.0306, 0.0427),
        (-0.0042, 0.1038, 0.1358),
        (-0.0194, 0.0020, 0.0669),
        (-0.0488, 0.0130, -0.0268),
        (0.0922, 0.0988, 0.0951),
        (-0.0278, 0.0524, -0.0542),
        (0.0332, 0.0456, 0.0895),
        (-0.0069, -0.0030, -0.0810),
        (-0.0596, -0.0465, -0.0293),
        (-0.1448, -0.1463, -0.1189),
    ),
    bias=(0.2394, 0.2135, 0.1925),
)
FLUX = LatentRGB(
    factors=(
        (-0.0346, 0.0244, 0.0681),
        (0.0034, 0.0210, 0.0687),
        (0.0275, -0.0668, -0.0433),
        (-0.0174, 0.0160, 0.0617),
        (0.0859, 0.0721, 0.0329),
        (0.0004, 0.0383, 0.0115),
        (0.0405, 0.0861, 0.0915),
        (-0.0236, -0.0185, -0.0259),
        (-0.0245, 0.0250, 0.1180),
        (0.1008, 0.0755, -0.0421),
        (-0.0515, 0.0201, 0.0011),
        (0.0428, -0.0012, -0.0036),
        (0.0817, 0.0765, 0.0749),
        (-0.1264, -0.0522, -0.1103),
        (-0.0280, -0.0881, -0.0499),
        (-0.1262, -0.0982, -0.0778),
    ),
    bias=(-0.0329, -0.0718, -0.0851),
)

#: Each catalogue family's projection.
LATENT_RGB: dict[str, LatentRGB] = {"sdxl": SDXL, "sd3": SD3, "flux": FLUX}


def preview_steps(steps: int, partial_images: int) -> list[int]:
    """After how many denoising steps each partial image is taken: evenly spaced, never at
    0 or the last step (that is the final image), so a short run gives fewer (OpenAI too
    may send fewer than asked) and a one-step model none."""
    marks = {steps * i // (partial_images + 1) for i in range(1, partial_images + 1)}
    return sorted(marks - {0})


@dataclass(frozen=True)
class _Due:
    """A request's rows of the batch, and which of its partial images they become."""

    request: GenerationRequest
    first_row: int
    partial_index: int


class PreviewCallback:
    """diffusers' `callback_on_step_end` for one batch: at a request's preview steps,
    project its rows of the latents and hand each image to its own sink."""

    def __init__(self, batch: Sequence[GenerationRequest], projection: LatentRGB) -> None:
        self.projection = projection
        self.due: dict[int, list[_Due]] = {}
        first_row = 0
        for request in batch:
            if request.on_preview is not None:
                steps = preview_steps(request.key.num_steps, request.partial_images)
                for partial_index, step in enumerate(steps):
                    self.due.setdefault(step, []).append(_Due(request, first_row, partial_index))
            first_row += request.n

    @classmethod
    def for_batch(
        cls, batch: Sequence[GenerationRequest], projection: LatentRGB
    ) -> PreviewCallback | None:
        """The callback, or None when no request of the batch wants a preview."""
        callback = cls(batch, projection)
        return callback if callback.due else None

    def __call__(
        self, pipeline: Any, step: int, timestep: Any, tensors: dict[str, Any]
    ) -> dict[str, Any]:
        for due in self.due.get(step + 1, ()):
            request = due.request
            rows = tensors["latents"][due.first_row : due.first_row + request.n]
            images = latents_to_rgb(pipeline, rows, timestep, request, self.projection)
            for image_index, image in enumerate(images):
                assert request.on_preview is not None
                request.on_preview(image_index, due.partial_index, image)
        return {}  # the latents go on unchanged


def latents_to_rgb(
    pipeline: Any,
    latents: torch.Tensor,
    timestep: Any,
    request: GenerationRequest,
    projection: LatentRGB,
) -> list[Image.Image]:
    """One small RGB image per row of `latents`, at the latents' resolution."""
    if latents.ndim == 3:  # FLUX.1: packed 2x2 patches
        key = request.key
        latents = pipeline._unpack_latents(
            latents, key.height, key.width, pipeline.vae_scale_factor
        )
    scale = getattr(pipeline.scheduler, "scale_model_input", None)
    if scale is not None:
        latents = scale(latents, timestep)
    factors = torch.tensor(projection.factors, dtype=torch.float32, device=latents.device)
    bias = torch.tensor(projection.bias, dtype=torch.float32, device=latents.device)
    rgb = torch.einsum("bchw,cr->bhwr", latents.float(), factors) + bias
    pixels = ((rgb + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).cpu().numpy()
    return [Image.fromarray(row) for row in pixels]
