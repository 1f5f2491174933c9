"""The model catalogue is the one list of models: the CRD, the chart and the server follow it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, get_args

import yaml

from tti_contracts.catalogue import CATALOGUE, ModelName
from tti_operator.builders import default_resources
from tti_operator.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]


def crd_spec_schema() -> dict[str, Any]:
    crd = yaml.safe_load((ROOT / "crds" / "tti.dev_texttoimagemodels.yaml").read_text())
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]  # type: ignore[no-any-return]


def test_the_type_and_the_table_list_the_same_models() -> None:
    assert get_args(ModelName) == tuple(CATALOGUE)
    assert all(name == model.name for name, model in CATALOGUE.items())


def test_the_crds_model_enum_is_the_catalogue() -> None:
    assert crd_spec_schema()["properties"]["model"]["enum"] == list(CATALOGUE)


def test_the_charts_model_enum_is_the_catalogue() -> None:
    schema = json.loads((ROOT / "charts" / "tti-operator" / "values.schema.json").read_text())
    found = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            model = node.get("properties", {}).get("model")
            if isinstance(model, dict) and "enum" in model:
                found.append(model["enum"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    assert found == [list(CATALOGUE)]


def test_the_crd_names_each_default_repo() -> None:
    """The source's description tells users which repository an unset source means."""
    described = crd_spec_schema()["properties"]["source"]["description"]
    for model in CATALOGUE.values():
        if model.default_repo is not None:
            assert model.default_repo in described, model.name


def test_the_operator_takes_its_defaults_from_the_catalogue() -> None:
    for name, model in CATALOGUE.items():
        spec = parse_spec({"model": name})
        assert spec.gpus == model.default_gpus
        source = spec.effective_source
        repo = source.hugging_face.repo if source and source.hugging_face else None
        assert repo == model.default_repo
        resources = default_resources(spec)
        assert resources["requests"] == model.resources(spec.gpus).requests
        assert resources["limits"] == model.resources(spec.gpus).limits
