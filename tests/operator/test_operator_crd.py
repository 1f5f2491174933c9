"""The CRD file and samples: names, subresources and columns users rely on.

Whether the API server accepts the schema and refuses bad objects is tested against a
real API server in test_operator_cluster.py; here the file's promises are pinned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from tti_contracts.api import GROUP, KIND, OPTIMISATIONS, PLURAL, VERSION
from tti_contracts.catalogue import CATALOGUE
from tti_operator.spec import (
    ADAPTER_NAME,
    CROSS_FIELD_RULES,
    MAX_ADAPTERS,
    Autoscaling,
    parse_spec,
)

CRDS = Path(__file__).resolve().parents[2] / "crds"


def crd() -> dict[str, Any]:
    return yaml.safe_load((CRDS / "tti.dev_texttoimagemodels.yaml").read_text())  # type: ignore[no-any-return]


def test_names_match_the_operator() -> None:
    spec = crd()["spec"]
    assert crd()["metadata"]["name"] == f"{PLURAL}.{GROUP}"
    assert (spec["group"], spec["scope"]) == (GROUP, "Namespaced")
    assert spec["names"]["kind"] == KIND
    assert spec["names"]["plural"] == PLURAL
    assert {"ttimodel", "ttimodels"} <= set(spec["names"]["shortNames"])
    assert [v["name"] for v in spec["versions"]] == [VERSION]


def test_status_and_scale_subresources() -> None:
    sub = crd()["spec"]["versions"][0]["subresources"]
    assert sub["status"] == {}
    assert sub["scale"] == {
        "specReplicasPath": ".spec.replicas",
        "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector",
    }


def test_printer_columns() -> None:
    columns = crd()["spec"]["versions"][0]["additionalPrinterColumns"]
    shown = [c["name"] for c in columns if c.get("priority", 0) == 0]
    assert shown == ["Model", "GPUs", "Format", "Ready", "Status", "Endpoint", "Age"]


def test_schema_defaults_and_required_fields() -> None:
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    props = schema["properties"]
    assert schema["required"] == ["model"]
    assert props["model"]["enum"][:2] == ["stub", "sdxl-turbo"]  # all: test_operator_catalogue
    assert props["imageFormat"]["default"] == "png"
    assert props["replicas"]["default"] == 1
    # gpus has no schema default: it depends on the model, the operator applies it.
    assert "default" not in props["gpus"] and props["gpus"]["minimum"] == 0


@pytest.mark.parametrize("sample", sorted((CRDS / "samples").glob("*.yaml")), ids=lambda p: p.name)
def test_samples_parse(sample: Path) -> None:
    body = yaml.safe_load(sample.read_text())
    assert body["apiVersion"] == f"{GROUP}/{VERSION}" and body["kind"] == KIND
    parse_spec(body["spec"])


def test_autoscaling_defaults_are_the_operators() -> None:
    """The API server fills the CRD's defaults; the operator's own must be the same."""
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    block = spec["properties"]["autoscaling"]
    assert block["required"] == ["maxReplicas"]
    defaults = {k: v["default"] for k, v in block["properties"].items() if "default" in v}
    parsed = Autoscaling.model_validate({"maxReplicas": 1})
    assert defaults == {
        "minReplicas": parsed.min_replicas,
        "targetInFlight": parsed.target_in_flight,
        "scaleDownDelaySeconds": parsed.scale_down_delay_s,
    }


def test_adapters_are_a_map_by_name_with_the_operators_limits() -> None:
    spec = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    block = spec["properties"]["adapters"]
    assert block["x-kubernetes-list-type"] == "map"
    assert block["x-kubernetes-list-map-keys"] == ["name"]
    assert block["maxItems"] == MAX_ADAPTERS
    item = block["items"]["properties"]
    assert item["name"]["pattern"] == ADAPTER_NAME and item["name"]["maxLength"] == 40
    assert (item["scale"]["default"], item["scale"]["minimum"], item["scale"]["maximum"]) == (
        1.0,
        0,
        4,
    )
    sources = item["source"]["properties"]
    assert set(sources) == {"huggingFace", "pvc", "hostPath"}
    assert sources["huggingFace"]["required"] == ["repo", "file"]
    assert sources["huggingFace"]["properties"]["revision"]["default"] == "main"
    assert "exactly one" in item["source"]["x-kubernetes-validations"][0]["message"]


def spec_schema() -> dict[str, Any]:
    return crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]  # type: ignore[no-any-return]


def test_optimisation_takes_the_contracts_values_and_defaults_to_the_operators() -> None:
    field = spec_schema()["properties"]["optimisation"]
    assert tuple(field["enum"]) == OPTIMISATIONS
    assert field["default"] == parse_spec({"model": "stub"}).optimisation == "none"


def test_the_crd_states_each_rule_across_fields_as_the_operator_does() -> None:
    """Same field, same words: `kubectl apply` and the operator's parse refuse alike."""
    stated = {
        rule["fieldPath"]: rule["message"]
        for rule in spec_schema()["x-kubernetes-validations"]
        if "fieldPath" in rule
    }
    for rule in CROSS_FIELD_RULES:
        assert stated.get(f".{rule.field}") == f"spec.{rule.field} {rule.message}"


def test_the_gpu_rule_knows_which_models_default_to_no_gpu() -> None:
    """CEL cannot read the catalogue: an unset spec.gpus is 0 for exactly the models it names."""
    [gpu_rule] = [
        rule["rule"]
        for rule in spec_schema()["x-kubernetes-validations"]
        if rule.get("fieldPath") == ".optimisation"
    ]
    cpu_by_default = [model.name for model in CATALOGUE.values() if model.default_gpus == 0]
    assert cpu_by_default == ["stub"]
    assert "(has(self.gpus) ? self.gpus >= 1 : self.model != 'stub')" in gpu_rule
