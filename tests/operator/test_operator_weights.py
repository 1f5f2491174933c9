"""The model cache's pure part: which entry a model names, what is applied, what it says."""

from __future__ import annotations

import json
from typing import Any

from tti_operator.settings import OperatorSettings
from tti_operator.spec import parse_spec
from tti_operator.weights import (
    COMMIT,
    FAILURES,
    ClaimState,
    Entry,
    FetchPodState,
    JobState,
    artefacts_path,
    build_claim,
    build_fetch_job,
    claim_state,
    entry_for,
    fetch_pod_state,
    job_state,
    quantity_bytes,
    snapshot_path,
    weights_state,
)

SETTINGS = OperatorSettings()
HUB_SETTINGS = OperatorSettings(server_image="tti-server:1", hub_endpoint="http://hub.local")


def entry(
    spec: dict[str, Any], namespace: str = "ns", settings: OperatorSettings = SETTINGS
) -> Entry | None:
    return entry_for(namespace, parse_spec(spec), settings)


def test_models_naming_the_same_repository_and_revision_share_an_entry() -> None:
    a = entry({"model": "sdxl-turbo"})
    b = entry(
        {
            "model": "sdxl-turbo",
            "replicas": 3,
            "source": {"huggingFace": {"repo": "stabilityai/sdxl-turbo"}},
        }
    )
    assert a is not None and b is not None and a.name == b.name
    other_revision = entry(
        {
            "model": "sdxl-turbo",
            "source": {"huggingFace": {"repo": "stabilityai/sdxl-turbo", "revision": "v2"}},
        }
    )
    on_a_cpu = entry({"model": "sdxl-turbo", "gpus": 0})
    assert other_revision is not None and on_a_cpu is not None
    assert len({a.name, other_revision.name, on_a_cpu.name}) == 3  # fp32 files differ
    assert a.variant == "fp16" and on_a_cpu.variant is None


def test_no_entry_without_hub_weights_or_with_the_cache_off() -> None:
    assert entry({"model": "stub"}) is None
    assert entry({"model": "sdxl-turbo", "source": {"hostPath": {"path": "/m"}}}) is None
    assert entry({"model": "sdxl-turbo", "cache": {"enabled": False}}) is None
    assert entry({"model": "sdxl-turbo"}, settings=OperatorSettings(cache_enabled=False)) is None
    assert (
        entry(
            {"model": "sdxl-turbo", "cache": {"enabled": True}},
            settings=OperatorSettings(cache_enabled=False),
        )
        is not None
    )


def test_storage_comes_from_the_resource_then_the_operator_then_the_catalogue() -> None:
    default = entry({"model": "sdxl-turbo"})
    assert default is not None
    claim = build_claim(default)
    assert claim["spec"] == {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": "24Gi"}},
    }
    assert "ownerReferences" not in claim["metadata"]  # outlives its models
    operator = OperatorSettings(
        cache_storage_class="nfs", cache_size="40Gi", cache_access_mode="ReadWriteMany"
    )
    shared = entry({"model": "sdxl-turbo"}, settings=operator)
    assert shared is not None
    assert build_claim(shared)["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "40Gi"}},
        "storageClassName": "nfs",
    }
    own = entry(
        {"model": "sdxl-turbo", "cache": {"size": "10Gi", "storageClassName": "fast"}},
        settings=operator,
    )
    assert own is not None
    assert build_claim(own)["spec"]["resources"]["requests"]["storage"] == "10Gi"
    assert build_claim(own)["spec"]["storageClassName"] == "fast"


def test_the_fetch_job_reads_the_token_from_a_file_and_is_owned_by_the_claim() -> None:
    gated = entry(
        {
            "model": "sdxl-turbo",
            "source": {"huggingFace": {"repo": "org/gated", "tokenSecret": {"name": "hf"}}},
        }
    )
    assert gated is not None
    job = build_fetch_job(gated, "claim-uid", HUB_SETTINGS)
    assert job["metadata"]["ownerReferences"][0]["uid"] == "claim-uid"
    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:2] == ["download", "org/gated"]
    assert "--token-file" in container["args"]
    assert not any("valueFrom" in item or "TOKEN" in item["name"] for item in container["env"])
    assert {"name": "HF_ENDPOINT", "value": "http://hub.local"} in container["env"]
    secret = next(v for v in pod["volumes"] if "secret" in v)["secret"]
    assert secret["secretName"] == "hf" and secret["items"] == [{"key": "token", "path": "token"}]
    assert "token" not in json.dumps(container["env"]).lower()
    assert container["resources"] == HUB_SETTINGS.cache_fetch_resources  # the chart's value


def test_a_model_pod_loads_the_commit_the_fetch_resolved() -> None:
    cached = entry({"model": "sdxl-turbo"})
    assert cached is not None
    path = snapshot_path(cached, "abc123")
    assert path == "/weights/hub/models--stabilityai--sdxl-turbo/snapshots/abc123"


def test_compiled_graphs_go_in_the_commits_artefacts_folder_the_fetch_made() -> None:
    """The server's layout (tti/ beside hub/), relative to the claim: a mount's subPath."""
    cached = entry({"model": "sdxl-turbo"})
    assert cached is not None
    path = artefacts_path(cached, "abc123")
    assert path == "tti/models--stabilityai--sdxl-turbo/abc123/artefacts"


def test_what_the_watched_objects_say() -> None:
    claim = claim_state(
        {
            "metadata": {"uid": "u", "annotations": {COMMIT: "c0ffee", FAILURES: "2"}},
            "status": {"phase": "Bound"},
        }
    )
    assert (claim.commit, claim.failures, claim.phase) == ("c0ffee", 2, "Bound")
    job = job_state(
        {"metadata": {"uid": "j"}, "status": {"conditions": [{"type": "Failed", "status": "True"}]}}
    )
    assert job.failed and not job.succeeded
    failed = {
        "event": "failed",
        "reason": "RepositoryNotFound",
        "message": "unknown repository org/x: HTTP 404",
    }
    pod = fetch_pod_state(
        {
            "metadata": {"name": "p"},
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {"state": {"terminated": {"message": json.dumps(failed) + "\n"}}}
                ],
            },
        }
    )
    assert pod.result == failed
    unschedulable = fetch_pod_state(
        {
            "metadata": {"name": "q"},
            "status": {
                "conditions": [
                    {
                        "type": "PodScheduled",
                        "status": "False",
                        "message": "0/1 nodes: unbound claim",
                    }
                ]
            },
        }
    )
    assert unschedulable.waiting == "0/1 nodes: unbound claim"


def test_the_weights_state_names_the_cause() -> None:
    e = entry({"model": "sdxl-turbo"})
    assert e is not None
    fresh = ClaimState("u", "Pending", {})
    assert weights_state(e, None, None, [], None).reason == "Pending"
    running = JobState("j", active=1, succeeded=False, failed=False)
    progress = {"event": "progress", "message": "1.2 GB of 6.9 GB"}
    downloading = weights_state(e, fresh, running, [], progress)
    assert downloading.reason == "Downloading" and "1.2 GB of 6.9 GB" in downloading.message
    failure = {"event": "failed", "message": "gated repository org/x: no token was given: 401"}
    failed_pod = FetchPodState("p", "Failed", failure, "")
    failed = weights_state(e, fresh, JobState("j", 0, False, True), [failed_pod], None)
    assert failed.reason == "DownloadFailed" and "no token was given" in failed.message
    cached = weights_state(e, ClaimState("u", "Bound", {COMMIT: "abc"}), None, [], None)
    assert cached.ready and cached.commit == "abc"


def test_the_claims_size_bounds_what_a_fetch_may_write() -> None:
    assert quantity_bytes("24Gi") == 24 * 2**30
    assert quantity_bytes("1.5G") == 1_500_000_000
    assert quantity_bytes("1048576") == 2**20
    small = entry({"model": "sdxl-turbo", "cache": {"size": "10Mi"}})
    assert small is not None
    args = build_fetch_job(small, "uid", HUB_SETTINGS)["spec"]["template"]["spec"]["containers"][0][
        "args"
    ]
    assert args[args.index("--room") + 1] == str(10 * 2**20)


def test_a_fetch_that_fails_before_it_can_say_why_shows_its_last_line() -> None:
    said = "tti-server download: error: unrecognized arguments: --room 1"
    terminated = {"exitCode": 2, "reason": "Error", "message": f"usage: ...\n{said}\n"}
    status = {"phase": "Failed", "containerStatuses": [{"state": {"terminated": terminated}}]}
    pod = fetch_pod_state({"metadata": {"name": "p"}, "status": status})
    assert pod.result == {"event": "failed", "message": f"exit code 2: {said}"}
