"""The tiny pipelines of every family: they load offline as the real pipeline classes and draw.

SDXL, SD3.5 and FLUX.1 schnell and dev, each written once per session
(`tiny_family_dirs`), loaded through diffusers' own auto classes and run on the CPU
at 64x64 in two steps, as the server's backends will run the real models.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import (
    AutoPipelineForText2Image,
    DiffusionPipeline,
    FluxPipeline,
    StableDiffusion3Pipeline,
    StableDiffusionXLPipeline,
)
from PIL import Image
from support.server import server_command
from support.tiny_model import pixel_difference
from transformers import AutoTokenizer

from tti_server.tools.tiny_model import FAMILIES, write_tiny_model

PIPELINE_CLASSES = {
    "sdxl": StableDiffusionXLPipeline,
    "sd3": StableDiffusion3Pipeline,
    "flux-schnell": FluxPipeline,
    "flux-dev": FluxPipeline,
}
FLOW_FAMILIES = ["sd3", "flux-schnell", "flux-dev"]
# The T5 tokenizer's folder in each flow-matching pipeline.
T5_TOKENIZER = {"sd3": "tokenizer_3", "flux-schnell": "tokenizer_2", "flux-dev": "tokenizer_2"}
LONG_PROMPT = " ".join(["a red fox in the snow"] * 120)  # 600 words: past CLIP's 77, T5's 512


@pytest.fixture(scope="module")
def pipelines(tiny_family_dirs: dict[str, Path]) -> dict[str, Any]:
    loaded = {}
    for family, path in tiny_family_dirs.items():
        pipeline = AutoPipelineForText2Image.from_pretrained(str(path))
        pipeline.set_progress_bar_config(disable=True)
        loaded[family] = pipeline
    return loaded


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("this test must not use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def draw(pipeline: Any, seed: int, prompt: str = "a red fox", **options: Any) -> Image.Image:
    options = {"height": 64, "width": 64, "num_inference_steps": 2, **options}
    generator = torch.Generator("cpu").manual_seed(seed)
    [image] = pipeline(prompt, generator=generator, **options).images
    assert isinstance(image, Image.Image)
    return image


def test_every_family_has_a_test() -> None:
    assert set(PIPELINE_CLASSES) == set(FAMILIES)


@pytest.mark.parametrize("family", PIPELINE_CLASSES)
@pytest.mark.usefixtures("no_network")
def test_reloads_offline_as_its_pipeline_class(
    tiny_family_dirs: dict[str, Path], family: str
) -> None:
    path = str(tiny_family_dirs[family])
    assert type(AutoPipelineForText2Image.from_pretrained(path)) is PIPELINE_CLASSES[family]
    assert type(DiffusionPipeline.from_pretrained(path)) is PIPELINE_CLASSES[family]


@pytest.mark.parametrize("family", PIPELINE_CLASSES)
def test_same_seed_same_pixels_other_seed_other_pixels(
    pipelines: dict[str, Any], family: str
) -> None:
    first = draw(pipelines[family], seed=7)
    assert first.size == (64, 64)
    assert pixel_difference(first, draw(pipelines[family], seed=7)) == 0
    assert pixel_difference(first, draw(pipelines[family], seed=8)) > 32


@pytest.mark.parametrize("family", PIPELINE_CLASSES)
def test_a_long_prompt_is_truncated_not_refused(pipelines: dict[str, Any], family: str) -> None:
    assert draw(pipelines[family], seed=0, prompt=LONG_PROMPT).size == (64, 64)


def test_flux_dev_embeds_the_guidance_scale(pipelines: dict[str, Any]) -> None:
    dev = pipelines["flux-dev"]
    assert dev.transformer.config.guidance_embeds
    low, high = (draw(dev, seed=3, guidance_scale=scale) for scale in (1.0, 4.0))
    assert pixel_difference(low, high) > 0


def test_flux_schnell_has_no_guidance_embedding(pipelines: dict[str, Any]) -> None:
    schnell = pipelines["flux-schnell"]
    assert not schnell.transformer.config.guidance_embeds
    assert not hasattr(schnell.transformer.time_text_embed, "guidance_embedder")
    low, high = (draw(schnell, seed=3, guidance_scale=scale) for scale in (0.0, 4.0))
    assert pixel_difference(low, high) == 0


def test_sd3_refuses_sizes_off_its_multiple_of_16(pipelines: dict[str, Any]) -> None:
    assert draw(pipelines["sd3"], seed=0, height=48, width=80).size == (80, 48)
    with pytest.raises(ValueError, match="divisible by 16"):
        draw(pipelines["sd3"], seed=0, height=64, width=72)


@pytest.mark.parametrize("family", ["flux-schnell", "flux-dev"])
def test_flux_rounds_sizes_down_to_a_multiple_of_16(pipelines: dict[str, Any], family: str) -> None:
    assert draw(pipelines[family], seed=0, height=48, width=80).size == (80, 48)
    assert draw(pipelines[family], seed=0, height=72, width=79).size == (64, 64)


@pytest.mark.parametrize("family", FLOW_FAMILIES)
def test_the_t5_tokenizer_pads_and_truncates_like_t5s(
    tiny_family_dirs: dict[str, Path], family: str
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_family_dirs[family] / T5_TOKENIZER[family])
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.model_max_length == 512
    for prompt in ("a red fox", LONG_PROMPT):
        options = {"padding": "max_length", "max_length": 256, "truncation": True}
        ids = tokenizer(prompt, **options).input_ids
        assert len(ids) == 256
        assert tokenizer.eos_token_id in ids
    assert tokenizer("a red fox").input_ids[-1] == tokenizer.eos_token_id


@pytest.mark.parametrize(
    ("family", "expected"),
    [
        ("sd3", {"shift": 3.0, "use_dynamic_shifting": False}),
        ("flux-schnell", {"shift": 1.0, "use_dynamic_shifting": False}),
        ("flux-dev", {"shift": 3.0, "use_dynamic_shifting": True, "max_shift": 1.15}),
    ],
)
def test_the_schedulers_are_the_real_checkpoints(
    tiny_family_dirs: dict[str, Path], family: str, expected: dict[str, Any]
) -> None:
    path = tiny_family_dirs[family] / "scheduler" / "scheduler_config.json"
    config = json.loads(path.read_text())
    assert config["_class_name"] == "FlowMatchEulerDiscreteScheduler"
    assert {key: config[key] for key in expected} == expected


@pytest.mark.parametrize("family", PIPELINE_CLASSES)
def test_two_writes_are_identical_small_and_readable_by_all(
    tiny_family_dirs: dict[str, Path], tmp_path: Path, family: str
) -> None:
    first, again = tiny_family_dirs[family], tmp_path / "again"
    write_tiny_model(again, family)
    files = sorted(p.relative_to(first) for p in first.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for relative in files:
        assert (again / relative).read_bytes() == (first / relative).read_bytes(), relative
        assert (first / relative).stat().st_mode & 0o444 == 0o444, relative
    assert sum((first / relative).stat().st_size for relative in files) < 15 * 2**20


def test_an_unknown_family_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="family: no tiny model of family 'dalle'; known: sdxl"):
        write_tiny_model(tmp_path / "tiny", "dalle")
    assert not (tmp_path / "tiny").exists()


def test_make_tiny_model_writes_the_family_asked_for(tmp_path: Path) -> None:
    target = tmp_path / "tiny-dev"
    command = [*server_command(), "make-tiny-model", "--family", "flux-dev", str(target)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wrote a tiny flux-dev pipeline to {target}"
    assert json.loads((target / "model_index.json").read_text())["_class_name"] == "FluxPipeline"
    transformer = json.loads((target / "transformer" / "config.json").read_text())
    assert transformer["guidance_embeds"] is True


def test_make_tiny_model_refuses_an_unknown_family(tmp_path: Path) -> None:
    command = [*server_command(), "make-tiny-model", "--family", "dalle", str(tmp_path / "x")]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 2
    assert "--family: invalid choice: 'dalle'" in done.stderr
