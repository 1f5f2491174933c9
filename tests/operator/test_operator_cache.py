"""The model cache in the reconcile, on the in-memory API: an entry per repository and
revision, fetched once, the model's pods held back until it is, the commit recorded, a
failure retried later, an unused entry collected. The fetch itself (`tti-server download`
in the Job's pod) is played here by the test; it runs for real in test_operator_cache_pods.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from memory_cluster import Harness, body

from tti_operator.kinds import CLAIM, FETCH_JOB, FETCH_POD
from tti_operator.settings import OperatorSettings
from tti_operator.spec import parse_spec
from tti_operator.weights import (
    COMMIT,
    ENTRY_LABEL,
    FAILURES,
    RETRY_AT,
    UNUSED_SINCE,
    entry_for,
)

Obj = dict[str, Any]
REPO = "org/tiny-sdxl"
SPEC: Obj = {"model": "sdxl-turbo", "gpus": 0, "source": {"huggingFace": {"repo": REPO}}}
ENTRY = entry_for("ns", parse_spec(SPEC), OperatorSettings())
assert ENTRY is not None
NAME = ENTRY.name


@pytest.fixture
def harness() -> Iterator[Harness]:
    h = Harness()
    now = [1_000_000.0]
    h.controller.weights.clock = lambda: now[0]
    h.now = now  # type: ignore[attr-defined]
    yield h
    h.close()


def last_status(h: Harness, name: str = "m") -> Obj:
    return h.api.status_of[name][-1]


def condition(status: Obj, kind: str) -> Obj:
    return next(c for c in status["conditions"] if c["type"] == kind)


def fetch_pod(result: Obj | None, phase: str = "Running") -> Obj:
    """The fetch Job's pod, as the kubelet reports it (`result`: its termination message)."""
    state: Obj = {"running": {}}
    if result is not None:
        state = {"terminated": {"exitCode": 0 if result["event"] == "done" else 3,
                                "message": json.dumps(result) + "\n"}}  # fmt: skip
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{NAME}-abcde", "namespace": "ns", "labels": {ENTRY_LABEL: NAME}},
        "status": {"phase": phase, "containerStatuses": [{"name": "fetch", "state": state}]},
    }


def finish_job(h: Harness, result: Obj) -> None:
    """The fetch ends: its pod terminates with `result`, then the Job says so."""
    h.api.put(FETCH_POD, fetch_pod(result, "Succeeded" if result["event"] == "done" else "Failed"))
    kind = "Complete" if result["event"] == "done" else "Failed"
    h.api.edit(
        FETCH_JOB,
        NAME,
        lambda job: job.update(status={"conditions": [{"type": kind, "status": "True"}]}),
        spec=False,
    )
    h.settle(waiting_ok=True)


DONE = {"event": "done", "commit": "c0ffee", "bytes_total": 11_000_000}
GATED = {
    "event": "failed",
    "reason": "GatedRepository",
    "message": f"gated repository {REPO}: no token was given: 401",
}


def test_a_model_waits_for_its_weights_without_a_pod(harness: Harness) -> None:
    harness.model(body(SPEC))
    assert (
        harness.api.objects["PersistentVolumeClaim", NAME]["spec"]["resources"]["requests"][
            "storage"
        ]
        == "24Gi"
    )
    job = harness.api.objects["Job", NAME]
    assert job["spec"]["template"]["spec"]["containers"][0]["args"][:2] == ["download", REPO]
    deployment = harness.stored("Deployment")
    assert deployment["spec"]["replicas"] == 0  # no GPU held while the weights are fetched
    status = last_status(harness)
    assert condition(status, "WeightsReady")["status"] == "False"
    assert status["weights"]["claim"] == NAME and status["weights"]["commit"] == ""


def test_progress_then_the_commit_then_the_pods(harness: Harness) -> None:
    harness.model(body(SPEC))
    harness.api.edit(FETCH_JOB, NAME, lambda job: job.update(status={"active": 1}), spec=False)
    harness.api.put(FETCH_POD, fetch_pod(None))
    harness.api.logs[f"{NAME}-abcde"] = '{"event": "progress", "message": "4.0 MB of 11.0 MB"}\n'
    harness.settle(waiting_ok=True)
    status = last_status(harness)
    assert status["phase"] == "Downloading"
    assert "4.0 MB of 11.0 MB" in condition(status, "Ready")["message"]

    finish_job(harness, DONE)
    harness.settle(waiting_ok=True)
    claim = harness.api.objects["PersistentVolumeClaim", NAME]
    assert claim["metadata"]["annotations"][COMMIT] == "c0ffee"
    assert ("Job", NAME) in harness.api.deletes  # read, then gone
    deployment = harness.stored("Deployment")
    assert deployment["spec"]["replicas"] == 1
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    path = container["args"][container["args"].index("--model-path") + 1]
    assert path == "/weights/hub/models--org--tiny-sdxl/snapshots/c0ffee"
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in container["env"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["weights"]["readOnly"] is True
    status = last_status(harness)
    assert condition(status, "WeightsReady") | {"lastTransitionTime": ""} == {
        "type": "WeightsReady", "status": "True", "reason": "Cached", "observedGeneration": 1,
        "message": f"{REPO}@main (claim {NAME}) at commit c0ffee", "lastTransitionTime": "",
    }  # fmt: skip
    assert status["weights"]["commit"] == "c0ffee"


def test_a_second_model_of_the_same_weights_fetches_nothing(harness: Harness) -> None:
    harness.model(body(SPEC))
    finish_job(harness, DONE)
    harness.settle(waiting_ok=True)
    harness.model(body(SPEC, name="again", uid="u2"))
    assert harness.api.applies.count(("Job", NAME)) == 1
    assert harness.stored("Deployment", "again")["spec"]["replicas"] == 1
    assert last_status(harness, "again")["weights"]["commit"] == "c0ffee"


def test_a_failed_fetch_names_the_cause_and_is_tried_again_later(harness: Harness) -> None:
    other = body({"model": "stub"}, name="other", uid="u3")
    harness.model(other)
    harness.model(body(SPEC))
    finish_job(harness, GATED)
    harness.settle(waiting_ok=True)
    claim = harness.api.objects["PersistentVolumeClaim", NAME]["metadata"]["annotations"]
    assert claim[FAILURES] == "1" and RETRY_AT in claim
    status = last_status(harness)
    assert status["phase"] == "DownloadFailed"
    assert condition(status, "Degraded")["status"] == "True"
    assert "no token was given" in condition(status, "WeightsReady")["message"]
    assert harness.stored("Deployment")["spec"]["replicas"] == 0
    assert last_status(harness, "other")["phase"] != "DownloadFailed"  # the others go on

    harness.enqueue(settle=False)
    harness.settle(waiting_ok=True)
    assert harness.api.applies.count(("Job", NAME)) == 1  # not before its time
    harness.now[0] += 31  # type: ignore[attr-defined]
    harness.enqueue(settle=False)
    harness.settle(waiting_ok=True)
    assert harness.api.applies.count(("Job", NAME)) == 2


def test_an_unused_entry_is_kept_for_the_retention_then_deleted(harness: Harness) -> None:
    harness.model(body(SPEC))
    finish_job(harness, DONE)
    harness.settle(waiting_ok=True)
    harness.model(body(SPEC, deleting=True))
    harness.run(harness.controller.weights.sweep())
    claim = harness.api.objects["PersistentVolumeClaim", NAME]
    assert UNUSED_SINCE in claim["metadata"]["annotations"]
    harness.now[0] += 3600  # type: ignore[attr-defined]
    harness.run(harness.controller.weights.sweep())
    assert ("PersistentVolumeClaim", NAME) in harness.api.objects  # a week by default

    harness.model(body(SPEC, uid="u4"))  # used again: unmarked, nothing fetched again
    harness.run(harness.controller.weights.sweep())
    claim = harness.api.objects["PersistentVolumeClaim", NAME]
    assert UNUSED_SINCE not in claim["metadata"]["annotations"]
    assert harness.api.applies.count(("Job", NAME)) == 1

    harness.model(body(SPEC, uid="u4", deleting=True))
    harness.run(harness.controller.weights.sweep())
    harness.now[0] += OperatorSettings().cache_retention_s  # type: ignore[attr-defined]
    harness.run(harness.controller.weights.sweep())
    assert ("PersistentVolumeClaim", NAME) not in harness.api.objects
    assert CLAIM.kind == "PersistentVolumeClaim"


def test_a_gated_entry_is_fetched_with_the_token_any_of_its_models_names(harness: Harness) -> None:
    harness.model(body(SPEC))
    finish_job(harness, GATED)
    with_token = {**SPEC, "source": {"huggingFace": {"repo": REPO, "tokenSecret": {"name": "hf"}}}}
    harness.model(body(with_token, name="allowed", uid="u5"), settle=False)
    harness.settle(waiting_ok=True)
    harness.now[0] += 31  # type: ignore[attr-defined]
    harness.enqueue(settle=False)  # the model without a token looks first
    harness.settle(waiting_ok=True)
    job = harness.api.objects["Job", NAME]["spec"]["template"]["spec"]
    assert "--token-file" in job["containers"][0]["args"]
    assert any(volume.get("secret", {}).get("secretName") == "hf" for volume in job["volumes"])
