"""LoRA adapters on one diffusers pipeline: load, delete, and the selection per batch.

diffusers loads an adapter's weights next to the base weights (through peft) and switches
between loaded adapters by changing which of them the LoRA layers apply, and at what
scale: `set_adapters([name], [scale])`, or `disable_lora()` for the base model. Nothing
is reloaded or recompiled, so a switch is cheap; still, `AdapterSlots.select` switches
only when a batch wants another adapter or scale than the last batch had.

A load that fails (most often an adapter made for another architecture, whose tensors
do not fit: diffusers raises a size mismatch) leaves the pipeline as it was, diffusers
removes what it had injected, and the adapter is refused with a one-line reason.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

from tti_server.backends.base import AdapterFile, AdapterGone

#: diffusers logs a failed load's whole exception (every mismatched tensor, one line
#: each) and warns that an SDXL adapter has no text-encoder part; the server logs the
#: outcome as one line itself (`_quiet`).
_NOISY_LOGGER = "diffusers.loaders"
_REASON_LENGTH = 300

#: `AdapterSlots.selected` when the pipeline's selection is not known (after a change).
_UNKNOWN = ("", -1.0)


class AdapterSlots:
    """The adapters loaded into one pipeline, and which one its LoRA layers apply now."""

    def __init__(self, pipeline: Any) -> None:
        self.pipeline = pipeline
        self.loaded: set[str] = set()
        self.selected: tuple[str | None, float] = (None, 1.0)  # nothing loaded: the base

    def update(self, delete: list[str], load: list[AdapterFile]) -> dict[str, str]:
        """Delete, then load; return the reason of each adapter that did not load."""
        self.selected = _UNKNOWN  # a load may change diffusers' active adapters
        gone = [name for name in delete if name in self.loaded]
        if gone:
            with _quiet(_NOISY_LOGGER):
                self.pipeline.delete_adapters(gone)
            self.loaded.difference_update(gone)
        refused: dict[str, str] = {}
        for adapter in load:
            try:
                with _quiet(_NOISY_LOGGER):
                    self.pipeline.load_lora_weights(
                        str(adapter.directory),
                        weight_name=adapter.weight_name,
                        adapter_name=adapter.name,
                    )
            except Exception as exc:
                refused[adapter.name] = f"cannot load {adapter.weight_name}: {reason(exc)}"
            else:
                self.loaded.add(adapter.name)
        return refused

    def select(self, name: str | None, scale: float) -> None:
        """Make the LoRA layers apply `name` at `scale` (None: none, the base model)."""
        if (name, scale) == self.selected:
            return
        if name is None:
            if self.loaded:
                self.pipeline.disable_lora()
        else:
            if name not in self.loaded:
                raise AdapterGone(f"adapter {name!r} was removed after this request came")
            self.pipeline.enable_lora()
            self.pipeline.set_adapters([name], [scale])
        self.selected = (name, scale)


def reason(exc: BaseException) -> str:
    """An exception as one line: its type, the first line of its message, and its first
    detail line (for a size mismatch: the first tensor that does not fit)."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    text = f"{type(exc).__name__}: {' '.join(lines[:2])}" if lines else type(exc).__name__
    return text if len(text) <= _REASON_LENGTH else text[: _REASON_LENGTH - 3] + "..."


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            # peft warns of what the server means to do: a second adapter in a model,
            # deleting the active one (in a failed load's clean-up, or a removal).
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        logger.setLevel(level)
