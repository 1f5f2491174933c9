"""The contract between the engine and a model backend.

The engine owns queueing, batching and one worker thread per device; a backend
only turns a batch of compatible requests into images on its own device. The
HTTP layer never imports a backend module, so it never touches torch. A backend
reports trouble with the two errors below, which the server turns into what a
client is told (`failures.py`).

A request may ask for partial images while it denoises (OpenAI's `partial_images`): the
backend hands each to the request's own `PreviewSink`, on the worker thread, so one
batch's previews reach each request separately. A backend that cannot make them (the
stub, a one-step model) sends none.

A backend that takes LoRA adapters (`TakesAdapters`) loads and deletes them on its worker
thread between batches, and runs each batch with the adapter its key names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Protocol, runtime_checkable

from PIL import Image


@dataclass(frozen=True)
class BatchKey:
    """Parameters that must match for requests to share one pipeline call."""

    height: int
    width: int
    num_steps: int
    guidance_scale: float
    negative_prompt: str | None
    #: The LoRA adapter the batch runs with (None: the base model) and its scale.
    adapter: str | None = None
    adapter_scale: float = 1.0


#: Where a request's partial images go: `(image_index, partial_index, image)`, called on
#: the worker thread; the image is at the latents' resolution (the receiver scales it).
PreviewSink = Callable[[int, int, Image.Image], None]


@dataclass(frozen=True)
class GenerationRequest:
    """One validated request: `n` images for `prompt`, reproducible when `seed` is set."""

    prompt: str
    key: BatchKey
    n: int = 1
    seed: int | None = None
    #: Partial images wanted per image (0-3), taken at evenly spaced denoising steps.
    partial_images: int = 0
    on_preview: PreviewSink | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Speedups:
    """Optional speed-ups for CUDA; each trades start-up time or generality for speed."""

    channels_last: bool = False  # UNet and VAE in channels-last memory format
    fuse_qkv: bool = False  # one matmul for the q, k and v projections of self-attention

    @classmethod
    def parse(cls, text: str) -> Speedups:
        """`"channels_last,fuse_qkv"` -> those options on; `""` -> none (a settings string)."""
        names = [name.strip().replace("-", "_") for name in text.split(",") if name.strip()]
        if "compile" in names:
            # Compiling is its own setting now: ahead of serving, per batch size, cached.
            raise ValueError("compile is not a speed-up; use --optimisation compile")
        known = {field.name for field in fields(cls)}
        unknown = [name for name in names if name not in known]
        if unknown:
            choices = ", ".join(sorted(known))
            raise ValueError(f"unknown speed-up {', '.join(unknown)}; choose from {choices}")
        return cls(**dict.fromkeys(names, True))

    def __str__(self) -> str:
        return ",".join(f.name for f in fields(self) if getattr(self, f.name)) or "none"


class BackendOutOfMemory(RuntimeError):
    """The device ran out of memory for this batch; the caller may retry later (503)."""


class AdapterGone(LookupError):
    """The batch's adapter was removed after its requests were accepted (404, as if it had
    never been there)."""


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message is the one line the operator sees."""


class Backend(Protocol):
    """A model loaded on one device. Only its worker thread calls it."""

    name: str
    device: str

    def generate(self, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
        """Run `batch` as one call; return, per request and in order, exactly its `n` images."""
        ...

    def release_memory(self) -> None:
        """Free cached device memory after a failed batch (no-op off CUDA)."""
        ...


@dataclass(frozen=True)
class AdapterFile:
    """An adapter's weights on local disk: `directory` / `weight_name`, loaded as `name`."""

    name: str
    directory: Path
    weight_name: str


@runtime_checkable
class TakesAdapters(Protocol):
    """A backend that loads LoRA adapters; any other (the stub) refuses every adapter."""

    def update_adapters(self, delete: list[str], load: list[AdapterFile]) -> dict[str, str]:
        """On the worker thread: delete adapters, then load others; return, by name, the
        one-line reason of each adapter that could not be loaded (the others serve)."""
        ...
