"""LoRA adapters on the tiny SDXL backend (CPU), through the real diffusers LoRA loader.

Adapters made offline with peft change the image of a seed, each differently; with no
adapter the image is the base model's, bit for bit; an adapter made for another
architecture is refused with the size mismatch, and the others keep serving. The backend
switches adapters only when a batch wants another one than the last batch had.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from support.server import server_command
from support.tiny_model import TinyAdapters

from tti_server.backends.base import AdapterFile, AdapterGone, BatchKey, GenerationRequest
from tti_server.backends.diffusion import DiffusionBackend, load_pipeline
from tti_server.tools.tiny_adapter import WEIGHT_NAME

BASE = BatchKey(height=64, width=64, num_steps=1, guidance_scale=0.0, negative_prompt=None)


def keyed(adapter: str | None, scale: float = 1.0) -> BatchKey:
    return BatchKey(64, 64, 1, 0.0, None, adapter=adapter, adapter_scale=scale)


def one(backend: DiffusionBackend, key: BatchKey, seed: int = 5) -> Image.Image:
    [[image]] = backend.generate([GenerationRequest("a lighthouse", key, n=1, seed=seed)])
    return image


def weights(name: str, directory: Path) -> AdapterFile:
    return AdapterFile(name, directory, WEIGHT_NAME)


@pytest.fixture(scope="module")
def adapted(tiny_model_dir: Path, tiny_adapters: TinyAdapters) -> DiffusionBackend:
    """A backend of its own (the shared `tiny_backend` stays without adapters)."""
    backend = load_pipeline(str(tiny_model_dir), "cpu")
    refused = backend.update_adapters(
        [], [weights("a", tiny_adapters.a), weights("b", tiny_adapters.b)]
    )
    assert refused == {}
    return backend


def test_each_adapter_changes_the_image_differently_and_none_is_the_base(
    adapted: DiffusionBackend, tiny_backend: DiffusionBackend
) -> None:
    with_a, with_b = one(adapted, keyed("a")), one(adapted, keyed("b"))
    base = one(adapted, keyed(None))
    never_adapted = one(tiny_backend, BASE)
    assert len({with_a.tobytes(), with_b.tobytes(), base.tobytes()}) == 3
    assert base.tobytes() == never_adapted.tobytes()
    assert one(adapted, keyed("a")).tobytes() == with_a.tobytes()


def test_scale_zero_is_the_base_and_another_scale_changes_the_image(
    adapted: DiffusionBackend,
) -> None:
    base = one(adapted, keyed(None))
    assert one(adapted, keyed("a", 0.0)).tobytes() == base.tobytes()
    assert one(adapted, keyed("a", 2.0)).tobytes() != one(adapted, keyed("a")).tobytes()


def test_a_mismatched_adapter_is_refused_and_the_others_serve(
    adapted: DiffusionBackend, tiny_adapters: TinyAdapters
) -> None:
    before = one(adapted, keyed("b"))
    refused = adapted.update_adapters([], [weights("bad", tiny_adapters.mismatched)])
    assert list(refused) == ["bad"]
    assert refused["bad"].startswith(f"cannot load {WEIGHT_NAME}: RuntimeError: ")
    assert "size mismatch" in refused["bad"]
    assert "\n" not in refused["bad"]
    assert "bad" not in adapted.adapters.loaded
    assert one(adapted, keyed("b")).tobytes() == before.tobytes()
    with pytest.raises(AdapterGone, match="adapter 'bad' was removed after this request came"):
        one(adapted, keyed("bad"))


def test_a_deleted_adapter_is_gone_and_can_be_loaded_again(
    tiny_model_dir: Path, tiny_adapters: TinyAdapters
) -> None:
    backend = load_pipeline(str(tiny_model_dir), "cpu")
    assert backend.update_adapters([], [weights("a", tiny_adapters.a)]) == {}
    with_a = one(backend, keyed("a"))
    assert backend.update_adapters(["a"], []) == {}
    assert backend.pipeline.get_list_adapters() == {}
    assert backend.update_adapters([], [weights("a", tiny_adapters.b)]) == {}  # new weights
    assert one(backend, keyed("a")).tobytes() != with_a.tobytes()


def counting(obj: Any, method: str, calls: list[str]) -> None:
    real: Callable[..., Any] = getattr(obj, method)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        return real(*args, **kwargs)

    setattr(obj, method, wrapper)


def test_the_backend_switches_only_when_the_adapter_changes(
    adapted: DiffusionBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []
    for method in ("set_adapters", "disable_lora", "enable_lora"):
        monkeypatch.setattr(adapted.pipeline, method, getattr(adapted.pipeline, method))
        counting(adapted.pipeline, method, calls)
    one(adapted, keyed("a"))
    calls.clear()
    for key in (keyed("a"), keyed("a"), keyed("b"), keyed("b"), keyed(None), keyed(None)):
        one(adapted, key)
    assert calls == ["enable_lora", "set_adapters", "disable_lora"]
    calls.clear()
    one(adapted, keyed("b", 0.5))  # the same adapter at another scale: a switch
    assert calls == ["enable_lora", "set_adapters"]


def test_the_command_writes_the_same_adapter_for_the_same_seed(
    tmp_path: Path, tiny_adapters: TinyAdapters
) -> None:
    command = [*server_command(), "make-tiny-adapter", str(tmp_path / "a"), "--seed", "1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    written = tmp_path / "a" / WEIGHT_NAME
    assert result.stdout.strip() == f"wrote a tiny sdxl LoRA adapter to {written}"
    assert written.read_bytes() == (tiny_adapters.a / WEIGHT_NAME).read_bytes()
    asked = [*server_command(), "make-tiny-adapter", "--help"]
    help_text = subprocess.run(asked, capture_output=True, text=True).stdout
    assert "usage: tti-server make-tiny-adapter [-h] [--family {sdxl}] [--seed SEED]" in help_text
