"""docs/models.md's table is the catalogue's, row for row (so the docs cannot drift)."""

from __future__ import annotations

from pathlib import Path

from tti_contracts.catalogue import CATALOGUE, ModelEntry

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"
GUIDANCE_WORDS = {"cfg": "classifier-free", "embedded": "embedded", "none": "none"}


def row(name: str, model: ModelEntry) -> str:
    """The table's line for `model`, as docs/models.md writes it."""
    repo = "none"
    if model.default_repo:
        repo = f"`{model.default_repo}`" + (" (gated)" if model.gated else "")
    most = "any" if model.max_guidance is None else f"{model.max_guidance:g}"
    guidance = (
        "none (distilled without it)"
        if model.max_guidance == 0
        else f"{model.default_guidance:g} / {most} ({GUIDANCE_WORDS[model.guidance]})"
    )
    gpu = f"{model.gpu_memory_gib} GiB" if model.gpu_memory_gib else "none"
    host = model.gpu_resources
    cells = [
        f"`{name}`",
        f"{model.family} ({model.pipeline_class or 'none'})",
        repo,
        f"{model.default_steps} / {model.max_steps}",
        guidance,
        f"{model.default_size}² / {model.max_side}, \N{MULTIPLICATION SIGN}{model.side_multiple}",
        model.negative_prompt,
        gpu,
        f"{host.requests.get('memory')} (limit {host.limits.get('memory')})",
        model.cache_size or "none",
    ]
    return "| " + " | ".join(cells) + " |"


def test_the_table_of_models_is_the_catalogue() -> None:
    lines = DOC.read_text().splitlines()
    rows = [line for line in lines if line.startswith("| `")]
    assert rows == [row(name, model) for name, model in CATALOGUE.items()]


if __name__ == "__main__":  # print the table's rows, to paste after a catalogue change
    print("\n".join(row(name, model) for name, model in CATALOGUE.items()))
