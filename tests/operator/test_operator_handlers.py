"""The kopf wiring that is pure enough to test without a cluster."""

from __future__ import annotations

import asyncio
import copy
import inspect
import itertools
from typing import Any, cast

import kopf
import pytest

from tti_operator import handlers
from tti_operator.settings import OperatorSettings

MODEL: dict[str, Any] = {
    "apiVersion": "tti.dev/v1alpha1",
    "kind": "TextToImageModel",
    "metadata": {
        "name": "m",
        "namespace": "ns",
        "uid": "u-1",
        "generation": 3,
        "resourceVersion": "41",
        "labels": {"team": "vision"},
        "annotations": {
            "note": "kept",
            "tti.dev/last-handled-configuration": '{"spec":{"model":"stub"}}\n',
            "tti.dev/kopf-managed": "yes",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
        },
        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:model": {}}}}],
    },
    "spec": {"model": "stub", "gpus": 0, "env": [{"name": "A", "value": "1"}]},
    "status": {"status": "Ready", "conditions": [{"type": "Ready", "status": "True"}]},
}

POD: dict[str, Any] = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {
        "name": "m-5d9c-x",
        "namespace": "ns",
        "labels": {"tti.dev/model": "m"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "m-5d9c", "uid": "rs"}],
        "managedFields": [{"manager": "kube-controller-manager", "fieldsV1": {"f:spec": {}}}],
    },
    "spec": {"containers": [{"name": "server", "image": "tti-server:0.1.0"}]},
    "status": {"phase": "Running", "containerStatuses": [{"ready": True}]},
}


def kopf_essence(body: dict[str, Any], extra: list[kopf.FieldSpec]) -> kopf.BodyEssence:
    storage = kopf.AnnotationsDiffBaseStorage(prefix="tti.dev", key="last-handled-configuration")
    return storage.build(body=kopf.Body(cast(kopf.RawBody, body)), extra_fields=extra)


def lean_essence(body: dict[str, Any], extra: list[kopf.FieldSpec]) -> kopf.BodyEssence:
    storage = handlers.LeanDiffBaseStorage(prefix="tti.dev", key="last-handled-configuration")
    return storage.build(body=kopf.Body(cast(kopf.RawBody, body)), extra_fields=extra)


@pytest.mark.parametrize("body", [MODEL, POD], ids=["model", "pod"])
@pytest.mark.parametrize(
    "extra",
    [[], [("spec",)], ["status.status"], [("metadata", "labels")], [("status", "conditions")]],
    ids=["none", "spec", "status-str", "metadata", "status-path"],
)
def test_lean_diff_base_builds_exactly_kopfs_essence(
    body: dict[str, Any], extra: list[kopf.FieldSpec]
) -> None:
    assert lean_essence(body, extra) == kopf_essence(body, extra)


def test_lean_essence_leaves_the_body_alone_and_shares_nothing_with_it() -> None:
    body = copy.deepcopy(MODEL)
    essence = cast(dict[str, Any], lean_essence(body, [("spec",)]))
    assert body == MODEL
    essence["spec"]["env"].append({"name": "B"})
    essence["metadata"]["labels"]["x"] = "y"
    assert body == MODEL  # a later edit of the essence cannot reach the live body


def test_a_spec_change_is_seen_and_a_status_or_managed_fields_change_is_not() -> None:
    before = lean_essence(MODEL, [("spec",)])
    status_only = copy.deepcopy(MODEL)
    status_only["status"] = {"status": "Degraded"}
    status_only["metadata"]["managedFields"].append({"manager": "tti-operator"})
    assert lean_essence(status_only, [("spec",)]) == before
    spec_change = copy.deepcopy(MODEL)
    spec_change["spec"]["gpus"] = 2
    assert lean_essence(spec_change, [("spec",)]) != before


def test_configure_keeps_kopfs_names_under_tti_dev_and_posts_only_its_warnings() -> None:
    settings = kopf.OperatorSettings()
    handlers.configure(settings, OperatorSettings.model_validate({}))
    assert isinstance(settings.persistence.diffbase_storage, handlers.LeanDiffBaseStorage)


def test_kopf_never_gives_up_on_a_request_so_one_forbidden_namespace_stops_nothing() -> None:
    """kopf stops the whole operator once a watch exhausts its retries (a namespace whose
    RoleBinding is missing): the delays go on for good, and each use starts afresh."""
    settings = kopf.OperatorSettings()
    handlers.configure(settings, OperatorSettings.model_validate({}))
    backoffs = settings.networking.error_backoffs
    assert not isinstance(backoffs, float | int)
    first = list(itertools.islice(backoffs, 100))
    assert first[:2] == [1, 1] and first[-1] == 30 and len(first) == 100
    assert list(itertools.islice(backoffs, 2)) == [1, 1]
    assert settings.persistence.finalizer.startswith("tti.dev/")
    assert settings.posting.level >= 30  # logging.WARNING


def test_models_take_only_event_handlers_so_kopf_writes_nothing_on_them() -> None:
    """No create/update/resume handler: kopf then neither diffs each event nor patches its
    last-handled-configuration annotation onto every model (one API write per model)."""
    registry = kopf.get_default_registry()
    resource = kopf.Resource("tti.dev", "v1alpha1", "texttoimagemodels", namespaced=True)
    # kopf has no public view of its registry; these are the two it consults per event.
    assert registry._watching.has_handlers(resource)
    assert not registry._changing.has_handlers(resource)
    assert not registry._indexing.has_handlers(resource)


@pytest.mark.parametrize(
    "callback",
    [
        handlers.model_event,
        handlers.probe_models,
        handlers.startup,
        handlers.login,
        handlers.cleanup,
    ],
)
def test_every_per_event_callback_is_async(callback: object) -> None:
    """kopf hands a plain function to a thread pool on every call."""
    assert inspect.iscoroutinefunction(callback)


def test_plain_kopf_run_stops_at_start_up_naming_the_command() -> None:
    """`tti-operator` is the one start-up path: it configures kopf and builds the controller,
    which `kopf run` would not."""
    with pytest.raises(kopf.PermanentError, match="tti-operator"):
        asyncio.run(handlers.startup(memo=kopf.Memo()))
