"""LoRA adapters on the operator's side: the spec, the manifest and the children it makes,
what the pods mount, and the AdaptersReady condition (pure), and the reconcile that reads a
fetch's outcome and a server's word (on the in-memory API)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from memory_cluster import Harness, body, pod

from tti_operator.adapters import (
    MANIFEST_PATH,
    FetchJobState,
    Served,
    adapters_state,
    fetch_job_state,
    job_name,
    served_states,
)
from tti_operator.builders import Owner, desired_children, pod_template
from tti_operator.kinds import ADAPTER_JOB, POD
from tti_operator.settings import OperatorSettings
from tti_operator.spec import InvalidSpec, ModelSpec, parse_spec
from tti_operator.status import compute_status

Obj = dict[str, Any]
OWNER = Owner(name="turbo", namespace="ml", uid="u-1")
SETTINGS = OperatorSettings(server_image="img")
NO_CACHE = SETTINGS.model_copy(update={"cache_enabled": False})
HUB = {"huggingFace": {"repo": "nerijs/pixel-art-xl", "file": "pixel-art-xl.safetensors"}}
PVC = {"pvc": {"claimName": "my-loras", "path": "styles/pixel.safetensors"}}
HOST = {"hostPath": {"path": "/data/loras/ink.safetensors"}}


def spec(*adapters: Obj) -> ModelSpec:
    return parse_spec({"model": "sdxl-turbo", "adapters": list(adapters)})


def adapter(name: str, source: Obj, scale: float | None = None) -> Obj:
    return {"name": name, "source": source, **({"scale": scale} if scale is not None else {})}


def children(s: ModelSpec, settings: OperatorSettings = SETTINGS, **fetches: FetchJobState) -> Obj:
    built = desired_children(OWNER, s, settings, None, fetches)
    return {(c["kind"], c["metadata"]["name"]): c for c in built}


def manifest(built: Obj) -> Obj:
    data = built["ConfigMap", "turbo-adapters"]["data"]["adapters.json"]
    parsed: Obj = json.loads(data)
    return parsed


def done(commit: str = "c0ffee") -> FetchJobState:
    return FetchJobState("j", 0, True, False, commit, "", "")


HUB_JOB = job_name("turbo", parse_spec({"model": "stub", "adapters": [adapter("x", HUB)]})
                   .adapters[0].source.hugging_face)  # type: ignore[arg-type]  # fmt: skip


# The spec.


@pytest.mark.parametrize(
    ("adapters", "message"),
    [
        ([adapter("a", HOST), adapter("a", PVC)], "spec.adapters: Value error, names must be "
         "unique: a more than once"),
        ([adapter("a", {"pvc": {"claimName": "c", "path": "x/../y"}})],
         "spec.adapters.0.source.pvc.path: Value error, 'x/../y' must be a relative path"),
        ([adapter("a", {"hostPath": {"path": "loras/a"}})],
         "spec.adapters.0.source.hostPath.path: Value error, 'loras/a' must be an absolute"),
        ([adapter("a", {"huggingFace": {"repo": "o/r", "file": "../a.safetensors"}})],
         "spec.adapters.0.source.huggingFace.file: Value error, '../a.safetensors'"),
        ([adapter("a", {"huggingFace": {"repo": "o/r"}})],
         "spec.adapters.0.source.huggingFace.file: Field required"),
        ([adapter("a", {**HOST, **PVC})],
         "spec.adapters.0.source: Value error, set exactly one of huggingFace, pvc, hostPath"),
        ([adapter("Pixel", HOST)], "spec.adapters.0.name: String should match pattern"),
        ([adapter("a" * 41, HOST)], "spec.adapters.0.name: String should have at most 40"),
        ([adapter("a", HOST, scale=4.5)], "spec.adapters.0.scale: Input should be less than"),
        ([adapter(f"a{n}", HOST) for n in range(17)],
         "spec.adapters: Tuple should have at most 16"),
    ],
)  # fmt: skip
def test_a_bad_adapter_is_refused_naming_its_field(adapters: list[Obj], message: str) -> None:
    with pytest.raises(InvalidSpec) as refused:
        parse_spec({"model": "stub", "adapters": adapters})
    assert str(refused.value).startswith(message)


def test_an_adapter_defaults_to_scale_one_and_revision_main() -> None:
    [parsed] = spec(adapter("a", HUB)).adapters
    assert parsed.scale == 1.0
    assert parsed.source.hugging_face is not None
    assert parsed.source.hugging_face.revision == "main"


# The manifest and the children.


def test_every_model_gets_an_empty_manifest_and_mounts_it() -> None:
    built = children(parse_spec({"model": "stub"}))
    assert manifest(built) == {"adapters": []}
    config_map = built["ConfigMap", "turbo-adapters"]
    assert config_map["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    pod = built["Deployment", "turbo"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"][-2:] == ["--adapters-file", MANIFEST_PATH]
    assert {"name": "adapters-manifest", "configMap": {"name": "turbo-adapters"}} in pod["volumes"]
    mount = {"name": "adapters-manifest", "mountPath": "/etc/tti/adapters", "readOnly": True}
    assert mount in container["volumeMounts"]  # no subPath: the kubelet swaps the file
    assert not [c for c in built if c[0] in ("Job", "PersistentVolumeClaim")]


def test_pvc_and_host_path_adapters_are_mounted_and_listed_sorted() -> None:
    built = children(spec(adapter("pixel", PVC, 0.8), adapter("ink", HOST)))
    assert manifest(built) == {
        "adapters": [
            {"name": "ink", "scale": 1.0, "path": "/adapter-sources/ink"},
            {"name": "pixel", "scale": 0.8,
             "path": "/adapter-sources/pixel/styles/pixel.safetensors"},
        ]
    }  # fmt: skip
    pod = built["Deployment", "turbo"]["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["adapter-pixel"]["persistentVolumeClaim"] == {
        "claimName": "my-loras",
        "readOnly": True,
    }
    assert volumes["adapter-ink"]["hostPath"] == {"path": "/data/loras/ink.safetensors"}
    mounts = {m["name"]: m for m in pod["containers"][0]["volumeMounts"]}
    assert mounts["adapter-ink"] == {
        "name": "adapter-ink",
        "mountPath": "/adapter-sources/ink",
        "readOnly": True,
    }


def test_the_manifest_text_is_deterministic() -> None:
    one = children(spec(adapter("b", HOST), adapter("a", PVC)))
    two = children(spec(adapter("a", PVC), adapter("b", HOST)))
    key = ("ConfigMap", "turbo-adapters")
    assert one[key]["data"] == two[key]["data"]


def test_a_hub_adapter_with_the_cache_is_fetched_by_a_job_into_the_model_claim() -> None:
    hub = {"huggingFace": {**HUB["huggingFace"], "tokenSecret": {"name": "hf"}}}
    s = spec(adapter("pixel", hub))
    built = children(s, SETTINGS.model_copy(update={"adapter_cache_size": "3Gi"}))
    claim = built["PersistentVolumeClaim", "turbo-adapters"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "3Gi"
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    [job] = [obj for (kind, _), obj in built.items() if kind == "Job"]
    name = job["metadata"]["name"]
    assert name.startswith("turbo-adapter-") and len(name) == len("turbo-adapter-") + 12
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    pod = job["spec"]["template"]
    # Not the model's pod labels: the Service and the status must not count a fetch pod.
    assert "tti.dev/model" not in pod["metadata"]["labels"]
    assert pod["metadata"]["labels"]["tti.dev/adapter-of"] == "turbo"
    [container] = pod["spec"]["containers"]
    assert container["args"] == [
        "download", "nerijs/pixel-art-xl", "--revision", "main",
        "--file", "pixel-art-xl.safetensors", "--cache-dir", "/adapters",
        "--room", str(3 * 2**30), "--timeout", "30",
        "--token-file", "/var/run/secrets/tti/hf-token/token",
        "--status-file", "/dev/termination-log",
    ]  # fmt: skip
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["adapters"] == {
        "name": "adapters",
        "persistentVolumeClaim": {"claimName": "turbo-adapters"},
    }
    assert volumes["hf-token"]["secret"]["secretName"] == "hf"
    # Not in the manifest until its file is there.
    assert manifest(built) == {"adapters": []}
    model_pod = built["Deployment", "turbo"]["spec"]["template"]["spec"]
    assert {"name": "adapters", "persistentVolumeClaim": {
        "claimName": "turbo-adapters", "readOnly": True}} in model_pod["volumes"]  # fmt: skip


def test_a_fetched_hub_adapter_is_listed_at_its_commit() -> None:
    built = children(spec(adapter("pixel", HUB)), **{HUB_JOB: done("c0ffee")})
    path = "/adapters/hub/models--nerijs--pixel-art-xl/snapshots/c0ffee/pixel-art-xl.safetensors"
    assert manifest(built) == {"adapters": [{"name": "pixel", "scale": 1.0, "path": path}]}
    running = FetchJobState("j", 1, False, False, "", "", "")
    assert manifest(children(spec(adapter("pixel", HUB)), **{HUB_JOB: running})) == {"adapters": []}


def test_a_hub_adapter_without_the_cache_is_fetched_by_the_server() -> None:
    built = children(spec(adapter("pixel", HUB)), NO_CACHE)
    assert manifest(built) == {
        "adapters": [{"name": "pixel", "scale": 1.0, "repo": "nerijs/pixel-art-xl",
                      "file": "pixel-art-xl.safetensors", "revision": "main"}]
    }  # fmt: skip
    assert not [c for c in built if c[0] in ("Job", "PersistentVolumeClaim")]


def test_a_long_model_name_keeps_its_job_names_valid() -> None:
    [parsed] = spec(adapter("a", HUB)).adapters
    assert parsed.source.hugging_face is not None
    name = job_name("m" * 62 + "-" + "x", parsed.source.hugging_face)
    assert len(name) <= 63 and not name.startswith("-") and "--" not in name


def template(s: ModelSpec, settings: OperatorSettings = SETTINGS, **fetches: FetchJobState) -> Obj:
    return children(s, settings, **fetches)["Deployment", "turbo"]["spec"]["template"]


def test_only_the_config_map_changes_when_adapters_come_and_go_live() -> None:
    """No restart: rescaling, a fetch finishing, and a second hub adapter leave the pod
    template as it was; the ConfigMap alone changes."""
    first = spec(adapter("pixel", HUB))
    rescaled = spec(adapter("pixel", HUB, 2.0))
    hub2 = {"huggingFace": {"repo": "org/other", "file": "o.safetensors"}}
    second = spec(adapter("pixel", HUB), adapter("other", hub2))
    base = template(first)
    assert template(rescaled) == base
    assert template(first, **{HUB_JOB: done()}) == base
    assert template(second, **{HUB_JOB: done()}) == base
    assert manifest(children(rescaled, **{HUB_JOB: done()}))["adapters"][0]["scale"] == 2.0
    # Without the cache every change is live too, and no adapter at all is the same pod.
    assert template(spec(), NO_CACHE) == template(spec(adapter("pixel", HUB)), NO_CACHE)


def test_a_volume_of_its_own_restarts_the_pods() -> None:
    """The first hub adapter (the claim) and a pvc or hostPath adapter add a volume."""
    assert template(spec()) != template(spec(adapter("pixel", HUB)))
    assert template(spec()) != template(spec(adapter("ink", HOST)))


def test_pod_template_takes_settings_for_the_adapter_claim() -> None:
    s = spec(adapter("pixel", HUB))
    assert pod_template(OWNER, s, SETTINGS) == template(s)


# What the server says, and the condition.


def test_the_last_state_line_of_the_log_is_read() -> None:
    log = "\n".join(
        [
            '2026-12-01 01:00:00,000 INFO tti_server.adapters: state {"a":{"state":"loading"}}',
            "2026-12-01 01:00:01,000 INFO tti_server.app: something else",
            '2026-12-01 01:00:02,000 INFO tti_server.adapters: state {"a":{"state":"loaded"},'
            '"b":{"state":"refused","reason":"shapes do not match"}}',
            "2026-12-01 01:00:03,000 INFO uvicorn: later",
        ]
    )
    assert served_states(log) == {
        "a": Served("loaded"),
        "b": Served("refused", "shapes do not match"),
    }
    assert served_states("no such line\n") is None


def test_a_jobs_annotations_are_its_outcome() -> None:
    job = {
        "metadata": {"uid": "j", "annotations": {"tti.dev/commit": "c0ffee"}},
        "status": {"conditions": [{"type": "Complete", "status": "True"}]},
    }
    assert fetch_job_state(job).done
    assert not fetch_job_state({"metadata": {"uid": "j"}, "status": {"active": 1}}).done


def state(s: ModelSpec, served: dict[str, Served] | None, **fetches: FetchJobState) -> Any:
    return adapters_state("turbo", s, SETTINGS, fetches, served)


def test_adapters_ready_says_what_stands_in_the_way() -> None:
    both = spec(adapter("pixel", HUB), adapter("ink", HOST))
    assert state(spec(), None) is None  # no adapters: no condition
    fetching = state(both, None)
    assert (fetching.reason, fetching.message) == ("Fetching", "fetching pixel")
    failed = FetchJobState("j", 0, False, True, "", "RepositoryNotFound: no such repo", "")
    said = state(both, None, **{HUB_JOB: failed})
    assert said.reason == "FetchFailed"
    assert said.message == (
        "adapter pixel (nerijs/pixel-art-xl/pixel-art-xl.safetensors@main): "
        "RepositoryNotFound: no such repo"
    )
    waiting = state(both, None, **{HUB_JOB: done()})
    assert (waiting.reason, waiting.message) == (
        "Loading",
        "waiting for a ready pod to load pixel, ink",
    )
    loading = state(
        both, {"pixel": Served("loaded"), "ink": Served("loading")}, **{HUB_JOB: done()}
    )
    assert (loading.reason, loading.message) == ("Loading", "loading ink")
    refused = {"pixel": Served("loaded"), "ink": Served("refused", "not an SDXL LoRA")}
    said = state(both, refused, **{HUB_JOB: done()})
    assert (said.reason, said.message) == (
        "AdapterRefused",
        "adapter ink refused: not an SDXL LoRA",
    )
    loaded = state(both, {"pixel": Served("loaded"), "ink": Served("loaded")}, **{HUB_JOB: done()})
    assert (loaded.reason, loaded.message, loaded.ready) == ("Loaded", "2 adapters loaded", True)


def test_the_status_has_adapters_ready_only_for_a_model_with_adapters() -> None:
    def conditions(adapters: Any) -> dict[str, Obj]:
        status = compute_status(
            owner=OWNER, desired=1, gpus=0, generation=1, deployment=None, pods=[],
            failure=None, previous={}, now="t", adapters=adapters,
        )  # fmt: skip
        return {c["type"]: c for c in status["conditions"]}

    assert "AdaptersReady" not in conditions(None)
    loaded = state(spec(adapter("ink", HOST)), {"ink": Served("loaded")})
    condition = conditions(loaded)["AdaptersReady"]
    assert (condition["status"], condition["reason"], condition["message"]) == (
        "True",
        "Loaded",
        "1 adapter loaded",
    )
    refused = state(spec(adapter("ink", HOST)), {"ink": Served("refused", "bad")})
    said = conditions(refused)
    assert said["AdaptersReady"]["status"] == "False"
    assert said["Degraded"]["status"] == "False"  # the base model and the others still serve


# The reconcile, on the in-memory API: the Job's outcome, the manifest, the server's word.


def test_a_fetch_that_ends_puts_its_adapter_in_the_manifest_and_the_log_says_the_rest() -> None:
    h = Harness()
    try:
        spec_ = {"model": "stub", "adapters": [adapter("pixel", HUB), adapter("ink", HOST)]}
        h.model(body(spec_))
        config = h.stored("ConfigMap", "m-adapters")
        assert [a["name"] for a in json.loads(config["data"]["adapters.json"])["adapters"]] == [
            "ink"
        ]
        assert ("PersistentVolumeClaim", "m-adapters") in h.api.objects
        [job] = [name for kind, name in h.api.objects if kind == "Job"]
        conditions = {c["type"]: c for c in h.api.status_of["m"][-1]["conditions"]}
        assert conditions["AdaptersReady"]["reason"] == "Fetching"
        template = h.stored("Deployment")["spec"]["template"]

        # The Job's pod ends with the download's last line; the Job completes.
        done_line = '{"event": "done", "commit": "c0ffee"}'
        terminated = {"terminated": {"exitCode": 0, "message": done_line}}
        fetch_pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{job}-x", "namespace": "ns", "labels": {"job-name": job}},
            "status": {"phase": "Succeeded", "containerStatuses": [{"state": terminated}]},
        }
        h.api.put(POD, fetch_pod)
        complete = {"conditions": [{"type": "Complete", "status": "True"}]}
        h.api.edit(ADAPTER_JOB, job, lambda j: j.update(status=complete), spec=False)
        h.settle()
        assert h.stored("Job", job)["metadata"]["annotations"]["tti.dev/commit"] == "c0ffee"
        listed = json.loads(h.stored("ConfigMap", "m-adapters")["data"]["adapters.json"])
        assert [a["name"] for a in listed["adapters"]] == ["ink", "pixel"]
        assert "/snapshots/c0ffee/" in listed["adapters"][1]["path"]
        assert h.stored("Deployment")["spec"]["template"] == template  # no restart

        # A ready pod says what it made of them.
        h.api.logs["m-1"] = (
            "x INFO tti_server.adapters: state "
            '{"pixel":{"state":"loaded"},"ink":{"state":"refused","reason":"not a LoRA"}}\n'
        )
        h.api.put(POD, pod("m", "m-1"))
        h.settle(waiting_ok=True)
        conditions = {c["type"]: c for c in h.api.status_of["m"][-1]["conditions"]}
        said = conditions["AdaptersReady"]
        assert (said["status"], said["reason"]) == ("False", "AdapterRefused")
        assert said["message"] == "adapter ink refused: not a LoRA"
    finally:
        h.close()
