"""The spec parser: per-model defaults the CRD cannot express, and errors naming the field."""

from __future__ import annotations

import pytest

from tti_operator.spec import InvalidSpec, parse_spec


def test_sdxl_turbo_defaults_to_one_gpu_and_its_hugging_face_repo() -> None:
    spec = parse_spec({"model": "sdxl-turbo"})
    assert spec.gpus == 1
    source = spec.effective_source
    assert source is not None and source.hugging_face is not None
    assert source.hugging_face.repo == "stabilityai/sdxl-turbo"
    assert (spec.replicas, spec.image_format) == (1, "png")


def test_stub_defaults_to_cpu_and_no_weights() -> None:
    spec = parse_spec({"model": "stub"})
    assert spec.gpus == 0
    assert spec.effective_source is None


def test_explicit_gpus_win_over_the_model_default() -> None:
    assert parse_spec({"model": "sdxl-turbo", "gpus": 0}).gpus == 0
    assert parse_spec({"model": "stub", "gpus": 2}).gpus == 2


def test_explicit_source_wins_over_the_default_repo() -> None:
    spec = parse_spec(
        {"model": "sdxl-turbo", "source": {"persistentVolumeClaim": {"claimName": "w"}}}
    )
    assert spec.effective_source is not None
    assert spec.effective_source.pvc is not None
    assert spec.effective_source.pvc.claim_name == "w"


def test_autoscaling_defaults_aim_at_a_few_requests_per_replica_and_keep_one() -> None:
    assert parse_spec({"model": "stub"}).autoscaling is None
    scaling = parse_spec({"model": "stub", "autoscaling": {"maxReplicas": 4}}).autoscaling
    assert scaling is not None
    assert (scaling.min_replicas, scaling.max_replicas) == (1, 4)
    assert (scaling.target_in_flight, scaling.scale_down_delay_s) == (2.0, 300)


def test_access_defaults_to_the_models_own_namespace() -> None:
    own = [{"podSelector": {}}]
    assert [p.as_peer() for p in parse_spec({"model": "stub"}).callers] == own
    assert [p.as_peer() for p in parse_spec({"model": "stub", "access": {}}).callers] == own
    assert parse_spec({"model": "stub", "access": {"from": []}}).callers == ()


def test_access_peers_keep_what_was_written() -> None:
    peer = {
        "namespaceSelector": {"matchExpressions": [{"key": "team", "operator": "Exists"}]},
        "podSelector": {"matchLabels": {"app": "client"}},
    }
    [parsed] = parse_spec({"model": "stub", "access": {"from": [peer]}}).callers
    assert parsed.as_peer() == peer


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"model": "dalle"}, "spec.model"),
        ({}, "spec.model"),
        ({"model": "stub", "gpus": -1}, "spec.gpus"),
        ({"model": "stub", "imageFormat": "gif"}, "spec.imageFormat"),
        ({"model": "stub", "replicas": -1}, "spec.replicas"),
        (
            {
                "model": "stub",
                "source": {"huggingFace": {"repo": "a/b"}, "hostPath": {"path": "/m"}},
            },
            "spec.source",
        ),
        ({"model": "stub", "source": {}}, "spec.source"),
        ({"model": "stub", "source": {"hostPath": {"path": "rel"}}}, "spec.source.hostPath.path"),
        ({"model": "stub", "maxBatchSize": 0}, "spec.maxBatchSize"),
        ({"model": "stub", "optimisation": "fast"}, "spec.optimisation"),
        ({"model": "stub", "optimisation": False}, "spec.optimisation"),  # not a string
        ({"model": "stub", "colour": "red"}, "spec.colour"),
        ({"model": "stub", "autoscaling": {}}, "spec.autoscaling.maxReplicas"),
        (
            {"model": "stub", "autoscaling": {"maxReplicas": 2, "minReplicas": 3}},
            "spec.autoscaling",
        ),
        (
            {"model": "stub", "autoscaling": {"maxReplicas": 2, "targetInFlight": 0}},
            "spec.autoscaling.targetInFlight",
        ),
        ({"model": "stub", "access": {"from": [{}]}}, "spec.access.from.0"),
        (
            {"model": "stub", "access": {"from": [{"podSelector": {"matchLabel": {}}}]}},
            "spec.access.from.0.podSelector.matchLabel",
        ),
        (
            {
                "model": "stub",
                "access": {
                    "from": [
                        {
                            "namespaceSelector": {
                                "matchExpressions": [{"key": "a", "operator": "In"}]
                            }
                        }
                    ]
                },
            },
            "spec.access.from.0.namespaceSelector.matchExpressions.0",
        ),
        (
            {
                "model": "stub",
                "access": {
                    "from": [
                        {
                            "podSelector": {
                                "matchExpressions": [
                                    {"key": "a", "operator": "Exists", "values": ["x"]}
                                ]
                            }
                        }
                    ]
                },
            },
            "spec.access.from.0.podSelector.matchExpressions.0",
        ),
        ({"model": "stub", "access": {"to": []}}, "spec.access.to"),
    ],
)
def test_invalid_specs_name_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(raw)
    assert str(caught.value).startswith(f"{field}:"), str(caught.value)


#: An adapter of a host path: the smallest spec.adapters entry.
INK = {"name": "ink", "source": {"hostPath": {"path": "/loras/ink.safetensors"}}}


def test_optimisation_defaults_to_none_as_the_crd_does() -> None:
    assert parse_spec({"model": "sdxl-turbo"}).optimisation == "none"


@pytest.mark.parametrize(
    "raw",
    [
        {"model": "sdxl-turbo", "gpus": 0, "optimisation": "compile"},
        {"model": "sdxl-turbo", "optimisation": "compile-cudagraphs"},  # one GPU by default
        {"model": "stub", "gpus": 1, "optimisation": "compile-cudagraphs"},
        {"model": "sdxl-turbo", "optimisation": "none", "adapters": [INK]},
        {"model": "sdxl-turbo", "optimisation": "compile", "adapters": []},
    ],
)
def test_optimisations_that_fit_the_model_are_accepted(raw: dict[str, object]) -> None:
    assert parse_spec(raw).optimisation == raw["optimisation"]


@pytest.mark.parametrize(
    ("raw", "refusal"),
    [
        (
            {"model": "sdxl-turbo", "gpus": 0, "optimisation": "compile-cudagraphs"},
            "spec.optimisation: compile-cudagraphs needs a GPU (spec.gpus >= 1); use compile"
            " on a CPU model",
        ),
        (
            {"model": "stub", "optimisation": "compile-cudagraphs"},  # no GPU by default
            "spec.optimisation: compile-cudagraphs needs a GPU (spec.gpus >= 1); use compile"
            " on a CPU model",
        ),
        (
            {"model": "sdxl-turbo", "optimisation": "compile", "adapters": [INK]},
            "spec.adapters: need spec.optimisation none: compiled graphs are of the base model",
        ),
        (
            {"model": "sdxl-turbo", "optimisation": "compile-cudagraphs", "adapters": [INK]},
            "spec.adapters: need spec.optimisation none: compiled graphs are of the base model",
        ),
    ],
)
def test_optimisations_that_cannot_run_are_refused_naming_the_field(
    raw: dict[str, object], refusal: str
) -> None:
    with pytest.raises(InvalidSpec) as caught:
        parse_spec(raw)
    assert str(caught.value) == refusal
