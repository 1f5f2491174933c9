"""The contract between the engine and a model backend.

The engine owns queueing, batching and one worker thread per device; a backend
only turns a batch of compatible requests into images on its own device. The
HTTP layer never imports a backend module, so it never touches torch. A backend
reports trouble with the two errors below, which the server turns into what a
client is told (`failures.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from PIL import Image


@dataclass(frozen=True)
class BatchKey:
    """Parameters that must match for requests to share one pipeline call."""

    height: int
    width: int
    num_steps: int
    guidance_scale: float
    negative_prompt: str | None


@dataclass(frozen=True)
class GenerationRequest:
    """One validated request: `n` images for `prompt`, reproducible when `seed` is set."""

    prompt: str
    key: BatchKey
    n: int = 1
    seed: int | None = None


class BackendOutOfMemory(RuntimeError):
    """The device ran out of memory for this batch; the caller may retry later (503)."""


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
