"""The SDXL backend on the CPU with the tiny model: sizes, seeds, batching, n, loading, errors.

Batched and unbatched runs of the same seed differ on the CPU only by float
rounding in batched matmuls: measured at most 1/255 on under 0.02 % of channel
values (64-128 px, 1-2 steps). `BATCH_TOLERANCE` allows 2/255.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from support.tiny_model import pixel_difference

from tti_contracts.catalogue import CATALOGUE
from tti_server.backends.base import (
    BackendOutOfMemory,
    BatchKey,
    GenerationRequest,
    ModelLoadError,
    Speedups,
)
from tti_server.backends.diffusion import DiffusionBackend, load_pipeline
from tti_server.tools.tiny_model import write_tiny_model

BATCH_TOLERANCE = 2
SMALL = BatchKey(height=64, width=64, num_steps=1, guidance_scale=0.0, negative_prompt=None)


def one(
    backend: DiffusionBackend, prompt: str, seed: int | None, key: BatchKey = SMALL
) -> Image.Image:
    [[image]] = backend.generate([GenerationRequest(prompt, key, n=1, seed=seed)])
    return image


@pytest.mark.parametrize(("height", "width"), [(64, 64), (64, 128), (128, 72), (8, 8), (24, 40)])
def test_images_have_the_requested_size(
    tiny_backend: DiffusionBackend, height: int, width: int
) -> None:
    key = BatchKey(height, width, 1, 0.0, None)
    image = one(tiny_backend, "a red fox", 0, key)
    assert image.size == (width, height)
    assert image.mode == "RGB"


def test_sizes_must_already_be_rounded_to_multiples_of_8(tiny_backend: DiffusionBackend) -> None:
    key = BatchKey(70, 64, 1, 0.0, None)
    with pytest.raises(ValueError, match="multiples of 8, got 70x64"):
        tiny_backend.generate([GenerationRequest("x", key, 1, 0)])


def test_same_seed_gives_the_same_image(tiny_backend: DiffusionBackend) -> None:
    first = one(tiny_backend, "a lighthouse", 42)
    again = one(tiny_backend, "a lighthouse", 42)
    other = one(tiny_backend, "a lighthouse", 43)
    assert first.tobytes() == again.tobytes()
    assert pixel_difference(first, other) > 10 * BATCH_TOLERANCE


def test_unseeded_requests_draw_different_images(tiny_backend: DiffusionBackend) -> None:
    assert pixel_difference(one(tiny_backend, "x", None), one(tiny_backend, "x", None)) > 0


def test_prompt_changes_the_image(tiny_backend: DiffusionBackend) -> None:
    assert pixel_difference(one(tiny_backend, "a cat", 7), one(tiny_backend, "a dog", 7)) > 0


def test_a_seeded_image_is_the_same_batched_or_alone(tiny_backend: DiffusionBackend) -> None:
    key = BatchKey(64, 96, 2, 0.0, None)
    prompts = ["a cat", "a dog", "a ship", "a tree"]
    alone = [one(tiny_backend, prompt, 100 + i, key) for i, prompt in enumerate(prompts)]
    batched = tiny_backend.generate(
        [GenerationRequest(prompt, key, 1, 100 + i) for i, prompt in enumerate(prompts)]
    )
    for single, [in_batch] in zip(alone, batched, strict=True):
        assert pixel_difference(single, in_batch) <= BATCH_TOLERANCE


def test_n_images_use_consecutive_seeds(tiny_backend: DiffusionBackend) -> None:
    [images] = tiny_backend.generate([GenerationRequest("a boat", SMALL, n=3, seed=10)])
    assert len(images) == 3
    for offset, image in enumerate(images):
        assert pixel_difference(image, one(tiny_backend, "a boat", 10 + offset)) <= BATCH_TOLERANCE
    assert pixel_difference(images[0], images[1]) > 10 * BATCH_TOLERANCE


def test_each_request_of_a_batch_gets_its_own_images_in_order(
    tiny_backend: DiffusionBackend,
) -> None:
    batch = [
        GenerationRequest("a cat", SMALL, n=2, seed=1),
        GenerationRequest("a dog", SMALL, n=1, seed=2),
        GenerationRequest("a cow", SMALL, n=3, seed=3),
    ]
    results = tiny_backend.generate(batch)
    assert [len(images) for images in results] == [2, 1, 3]
    for request, images in zip(batch, results, strict=True):
        assert request.seed is not None
        for offset, image in enumerate(images):
            reference = one(tiny_backend, request.prompt, request.seed + offset)
            assert pixel_difference(image, reference) <= BATCH_TOLERANCE


def test_guidance_and_negative_prompt_are_used(tiny_backend: DiffusionBackend) -> None:
    guided = BatchKey(64, 64, 2, 3.0, "blurry")
    plain = BatchKey(64, 64, 2, 0.0, None)
    first = one(tiny_backend, "a cat", 5, guided)
    assert first.tobytes() == one(tiny_backend, "a cat", 5, guided).tobytes()
    assert pixel_difference(first, one(tiny_backend, "a cat", 5, plain)) > 0


def test_a_batch_must_share_one_key(tiny_backend: DiffusionBackend) -> None:
    other = BatchKey(64, 128, 1, 0.0, None)
    batch = [GenerationRequest("a", SMALL, 1, 0), GenerationRequest("b", other, 1, 0)]
    with pytest.raises(ValueError, match="share one BatchKey"):
        tiny_backend.generate(batch)


def test_cuda_out_of_memory_becomes_backend_out_of_memory() -> None:
    # No GPU here: a pipeline stand-in raises what torch raises when CUDA runs out.
    def out_of_memory(**_: object) -> None:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    backend = DiffusionBackend(out_of_memory, "cuda:0", CATALOGUE["sdxl-turbo"])
    with pytest.raises(BackendOutOfMemory, match="cuda:0 ran out of memory for 2 image"):
        backend.generate([GenerationRequest("x", SMALL, n=2, seed=0)])


def test_release_memory_off_cuda_does_nothing(tiny_backend: DiffusionBackend) -> None:
    tiny_backend.release_memory()
    assert one(tiny_backend, "still works", 1).size == (64, 64)


def test_caikit_model_dir_loads_the_same_pipeline(
    tiny_caikit_dir: Path, tiny_backend: DiffusionBackend
) -> None:
    assert (tiny_caikit_dir / "config.yml").is_file()
    caikit = load_pipeline(str(tiny_caikit_dir), "cpu")
    assert type(caikit.pipeline).__name__ == "StableDiffusionXLPipeline"
    # Same seeded weights, same seed: the very same image.
    assert one(caikit, "a fox", 3).tobytes() == one(tiny_backend, "a fox", 3).tobytes()


def test_tiny_model_is_made_of_the_real_sdxl_classes(tiny_model_dir: Path) -> None:
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    assert index["vae"] == ["diffusers", "AutoencoderKL"]
    assert index["text_encoder"] == ["transformers", "CLIPTextModel"]
    assert index["text_encoder_2"] == ["transformers", "CLIPTextModelWithProjection"]
    assert index["scheduler"] == ["diffusers", "EulerAncestralDiscreteScheduler"]
    unet = json.loads((tiny_model_dir / "unet" / "config.json").read_text())
    assert unet["addition_embed_type"] == "text_time"
    scheduler = json.loads((tiny_model_dir / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["timestep_spacing"] == "trailing"
    for name in ("tokenizer", "tokenizer_2"):
        config = json.loads((tiny_model_dir / name / "tokenizer_config.json").read_text())
        assert config["model_max_length"] == 77


def test_tiny_model_is_small_and_the_same_every_time(tiny_model_dir: Path, tmp_path: Path) -> None:
    write_tiny_model(tmp_path / "again")
    weights = sorted(p.relative_to(tiny_model_dir) for p in tiny_model_dir.rglob("*.safetensors"))
    assert len(weights) == 4  # unet, vae and two text encoders
    for relative in weights:
        assert (tmp_path / "again" / relative).read_bytes() == (
            tiny_model_dir / relative
        ).read_bytes()
    size = sum(p.stat().st_size for p in tiny_model_dir.rglob("*") if p.is_file())
    assert size < 15 * 2**20


def test_tiny_model_with_a_long_prompt(tiny_backend: DiffusionBackend) -> None:
    # Prompts longer than CLIP's 77 tokens are truncated, not an error.
    assert one(tiny_backend, "a very long prompt " * 40, 0).size == (64, 64)


# --- loading errors: one line that names what was tried --------------------------------


def load_error(model_path: str | Path) -> str:
    with pytest.raises(ModelLoadError) as caught:
        load_pipeline(str(model_path), "cpu")
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def copy_of(tiny_model_dir: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, copy)
    return copy


def test_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    assert load_error(missing) == f"model directory {missing} does not exist"


def test_directory_that_is_no_model(tmp_path: Path) -> None:
    message = load_error(tmp_path)
    assert message == (
        f"{tmp_path} is neither a diffusers pipeline (no model_index.json) "
        "nor a caikit model (no config.yml)"
    )


def test_file_instead_of_directory(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"\0" * 16)
    assert load_error(path) == f"model path {path} is a file, not a model directory"


def test_corrupt_model_index(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = copy_of(tiny_model_dir, tmp_path)
    (model / "model_index.json").write_text("{not json")
    message = load_error(model)
    assert message.startswith(f"cannot load diffusers directory {model}: ")
    assert "model_index.json is not valid JSON" in message


def test_truncated_weights(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = copy_of(tiny_model_dir, tmp_path)
    weights = model / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    message = load_error(model)
    assert message.startswith(f"cannot load diffusers directory {model}: ")
    assert "diffusion_pytorch_model.safetensors" in message


def test_missing_component(tiny_model_dir: Path, tmp_path: Path) -> None:
    model = copy_of(tiny_model_dir, tmp_path)
    shutil.rmtree(model / "vae")
    assert load_error(model).startswith(f"cannot load diffusers directory {model}: ")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ("sdxl_model: [unclosed", "cannot read caikit config {config}: "),
        ("model_name: x\n", "caikit config {config} has no `sdxl_model` key"),
        ("- a list\n", "caikit config {config} has no `sdxl_model` key"),
        (
            "sdxl_model: elsewhere\n",
            "caikit config {config} names sdxl_model: elsewhere, but {model}/elsewhere "
            "holds no diffusers pipeline",
        ),
    ],
)
def test_bad_caikit_config(tmp_path: Path, config: str, expected: str) -> None:
    (tmp_path / "config.yml").write_text(config)
    message = load_error(tmp_path)
    assert message.startswith(expected.format(config=tmp_path / "config.yml", model=tmp_path))


def test_hub_repo_offline_names_what_it_tried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    message = load_error("tti-test-org/no-such-model")
    assert message.startswith(
        "cannot load Hugging Face repo tti-test-org/no-such-model (no local directory of that "
        "name) from the local cache only (offline): "
    )


# --- optional speed-ups ---------------------------------------------------------------


def test_speed_up_options_parse_from_a_settings_string() -> None:
    assert Speedups.parse("") == Speedups()
    assert Speedups.parse(" channels-last , fuse_qkv") == Speedups(
        channels_last=True, fuse_qkv=True
    )
    assert str(Speedups.parse("fuse_qkv")) == "fuse_qkv"
    with pytest.raises(ValueError, match="unknown speed-up turbo; choose from channels_last"):
        Speedups.parse("channels_last,turbo")


def test_channels_last_and_fused_qkv_draw_the_same_images(
    tiny_model_dir: Path, tiny_backend: DiffusionBackend
) -> None:
    options = Speedups(channels_last=True, fuse_qkv=True)
    fast = load_pipeline(str(tiny_model_dir), "cpu", options)
    assert pixel_difference(one(fast, "a fox", 8), one(tiny_backend, "a fox", 8)) <= BATCH_TOLERANCE


def test_a_model_saved_only_as_the_fp16_variant_loads_on_the_cpu_in_fp32(
    tiny_backend: DiffusionBackend, tmp_path: Path
) -> None:
    # What `save_pretrained(variant="fp16")` writes, as the GPU benchmark does.
    tiny_backend.pipeline.save_pretrained(str(tmp_path), variant="fp16")
    assert not list(tmp_path.glob("unet/diffusion_pytorch_model.safetensors"))
    backend = load_pipeline(str(tmp_path), "cpu")
    assert backend.pipeline.unet.dtype == torch.float32
    assert one(backend, "a fox", 1).size == (64, 64)


def test_tiny_model_is_readable_by_the_pods_user(tiny_model_dir: Path) -> None:
    """A pod runs as uid 10001 and a hostPath keeps the node's modes: safetensors' 0600
    files would not load (the real node showed it)."""
    for item in [tiny_model_dir, *tiny_model_dir.rglob("*")]:
        wanted = 0o005 if item.is_dir() else 0o004
        assert item.stat().st_mode & wanted == wanted, oct(item.stat().st_mode)
