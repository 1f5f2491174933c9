"""The operator against the real test cluster: API server, controllers, scheduler, kwok nodes.

What is real: validation and defaulting by the API server (schema and CEL), server-side
apply, owner-reference garbage collection, the Deployment controller, the scheduler and
its messages, kubectl. What is simulated: the nodes (kwok marks scheduled pods Running and
Ready; no container runs), so "Ready" here means "the pods were placed and started".
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from operator_harness import REPO, SERVER_IMAGE, OperatorProcess, wait_for
from support.cluster import Cluster
from support.helm import Helm, ensure_helm
from support.server import free_port

from tti_contracts.api import OPTIMISATIONS

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

SAMPLES = REPO / "crds" / "samples"
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class Kube:
    """kubectl in one namespace, returning parsed JSON."""

    def __init__(self, cluster: Cluster, namespace: str, operator: OperatorProcess) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.operator = operator

    def run(self, *args: str, input: str | None = None, check: bool = True) -> str:
        result = self.cluster.kubectl("-n", self.namespace, *args, input=input, check=check)
        return result.stdout if result.returncode == 0 or check else result.stderr

    def apply(self, obj: dict[str, Any]) -> None:
        self.run("apply", "-f", "-", input=json.dumps(obj))

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        result = self.cluster.kubectl(
            "-n", self.namespace, "get", kind, name, "-o", "json", check=False
        )
        if result.returncode != 0:
            return None
        return json.loads(result.stdout)  # type: ignore[no-any-return]

    def must_get(self, kind: str, name: str) -> dict[str, Any]:
        obj = self.get(kind, name)
        assert obj is not None, f"{kind}/{name} does not exist"
        return obj

    def wait_ready(self, name: str, timeout_s: int = 90) -> dict[str, Any]:
        # The user's way to wait; proves the condition is live and well-formed.
        self.run("wait", "--for=condition=Ready", f"ttimodel/{name}", f"--timeout={timeout_s}s")
        return self.must_get("ttimodel", name)

    def wait(self, kind: str, name: str, done: Any, what: str, timeout_s: float = 90) -> Any:
        return wait_for(
            lambda: self.get(kind, name), done, what, timeout_s=timeout_s, operator=self.operator
        )


@pytest.fixture
def kube(cluster: Cluster, operator_namespace: str, operator: OperatorProcess) -> Iterator[Kube]:
    if not operator.alive():
        operator.start()
    yield Kube(cluster, operator_namespace, operator)


def model(name: str, **spec: Any) -> dict[str, Any]:
    """A TextToImageModel; CPU models tolerate nothing, so they land on the CPU node."""
    return {
        "apiVersion": "tti.dev/v1alpha1",
        "kind": "TextToImageModel",
        "metadata": {"name": name},
        "spec": spec,
    }


def sample(name: str) -> dict[str, Any]:
    return yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())  # type: ignore[no-any-return]


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    items = (obj or {}).get("status", {}).get("conditions", [])
    return next((c for c in items if c["type"] == kind), {})


def server(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]["containers"][0]  # type: ignore[no-any-return]


def test_samples_become_ready_with_owned_children(kube: Kube) -> None:
    kube.apply(sample("stub"))
    kube.apply(sample("sdxl-turbo"))
    for name in ("stub", "sdxl-turbo"):
        resource = kube.wait_ready(name)
        uid = resource["metadata"]["uid"]
        assert resource["status"]["ready"] == "1/1"
        assert resource["status"]["phase"] == "Ready"
        assert resource["status"]["endpoint"] == f"http://{name}.{kube.namespace}.svc:8080"
        assert resource["metadata"].get("finalizers") is None  # kubectl delete never hangs
        for kind in ("deployment", "service"):
            child = kube.must_get(kind, name)
            [owner] = child["metadata"]["ownerReferences"]
            assert (owner["kind"], owner["uid"], owner["controller"]) == (
                "TextToImageModel",
                uid,
                True,
            )
        svc = kube.must_get("service", name)
        assert svc["spec"]["type"] == "ClusterIP"
        assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [
            ("http", 8080),
            ("grpc", 8085),
        ]
        assert svc["spec"]["selector"]["tti.dev/model"] == name

    turbo = kube.must_get("deployment", "sdxl-turbo")
    pod = turbo["spec"]["template"]["spec"]
    c = server(turbo)
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert GPU_TOLERATION in pod["tolerations"]
    assert c["image"] == SERVER_IMAGE
    assert c["args"][c["args"].index("--image-format") + 1] == "jpeg"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["startupProbe"]["failureThreshold"] * c["startupProbe"]["periodSeconds"] >= 1200
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    [turbo_pod] = json.loads(
        kube.run("get", "pods", "-l", "tti.dev/model=sdxl-turbo", "-o", "json")
    )["items"]
    assert turbo_pod["spec"]["nodeName"].startswith("kwok-gpu-")

    stub = kube.must_get("deployment", "stub")
    assert "nvidia.com/gpu" not in server(stub)["resources"].get("limits", {})
    assert "tolerations" not in stub["spec"]["template"]["spec"]

    # Both spellings resolve, and the printer columns are filled in.
    assert kube.run("get", "ttimodels", "-o", "name") == kube.run("get", "ttimodel", "-o", "name")
    table = kube.run("get", "ttimodels")
    header, *rows = table.splitlines()
    assert header.split() == [
        "NAME",
        "MODEL",
        "GPUS",
        "FORMAT",
        "READY",
        "STATUS",
        "ENDPOINT",
        "AGE",
    ]
    turbo_row = next(r.split() for r in rows if r.startswith("sdxl-turbo "))
    assert turbo_row[1:6] == ["sdxl-turbo", "1", "jpeg", "1/1", "Ready"]
    stub_row = next(r.split() for r in rows if r.startswith("stub "))
    assert stub_row[2] == "0"

    events = kube.run("get", "events", "--field-selector", "involvedObject.name=stub", "-o", "json")
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"Created", "Ready"} <= reasons


def test_kubectl_scale_reaches_the_deployment(kube: Kube) -> None:
    kube.apply(model("scaled", model="stub"))
    kube.wait_ready("scaled")
    kube.run("scale", "ttimodel/scaled", "--replicas", "3")
    kube.wait(
        "ttimodel",
        "scaled",
        lambda r: r["status"].get("ready") == "3/3" and condition(r, "Ready")["status"] == "True",
        "3/3 replicas ready",
    )
    assert kube.must_get("deployment", "scaled")["spec"]["replicas"] == 3
    # What a HorizontalPodAutoscaler reads: the scale subresource with the pod selector.
    scale = json.loads(
        kube.cluster.kubectl(
            "get", "--raw",
            f"/apis/tti.dev/v1alpha1/namespaces/{kube.namespace}/texttoimagemodels/scaled/scale",
        ).stdout
    )  # fmt: skip
    assert scale["spec"]["replicas"] == 3
    assert scale["status"]["replicas"] == 3
    assert scale["status"]["selector"] == "app.kubernetes.io/name=tti-server,tti.dev/model=scaled"


def test_changing_gpus_and_format_rolls_out(kube: Kube) -> None:
    kube.apply(model("rolling", model="sdxl-turbo"))
    before = kube.wait_ready("rolling")
    kube.run(
        "patch", "ttimodel/rolling", "--type", "merge", "-p",
        json.dumps({"spec": {"gpus": 2, "imageFormat": "webp"}}),
    )  # fmt: skip
    generation = before["metadata"]["generation"] + 1
    after = kube.wait(
        "ttimodel",
        "rolling",
        lambda r: (
            r["status"].get("observedGeneration") == generation
            and condition(r, "Ready")["status"] == "True"
        ),
        f"Ready at generation {generation}",
    )
    assert after["status"]["gpus"] == 2
    c = server(kube.must_get("deployment", "rolling"))
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert c["args"][c["args"].index("--image-format") + 1] == "webp"
    kube.run("rollout", "status", "deployment/rolling", "--timeout=60s")
    pods = json.loads(kube.run("get", "pods", "-l", "tti.dev/model=rolling", "-o", "json"))
    limits = {
        p["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]
        for p in pods["items"]
        if not p["metadata"].get("deletionTimestamp")
    }
    assert limits == {"2"}


def test_children_deleted_or_edited_by_hand_are_put_back(kube: Kube) -> None:
    kube.apply(model("healing", model="stub"))
    kube.wait_ready("healing")
    old = kube.must_get("deployment", "healing")["metadata"]["uid"]
    kube.run("delete", "deployment", "healing", "--wait=false")
    kube.wait(
        "deployment",
        "healing",
        lambda d: d is not None and d["metadata"]["uid"] != old,
        "the Deployment re-created",
    )
    kube.run("delete", "service", "healing", "--wait=false")
    kube.wait("service", "healing", lambda s: s is not None, "the Service re-created")
    kube.run(
        "patch", "deployment/healing", "--type", "json", "-p",
        json.dumps([{"op": "replace", "path": "/spec/template/spec/containers/0/image",
                     "value": "someone-elses:1"}]),
    )  # fmt: skip
    kube.wait(
        "deployment",
        "healing",
        lambda d: server(d)["image"] == SERVER_IMAGE,
        "the hand-edited image restored",
    )
    kube.wait_ready("healing")


def test_deleting_the_resource_garbage_collects_the_children(kube: Kube) -> None:
    kube.apply(model("doomed", model="stub"))
    kube.wait_ready("doomed")
    kube.run("delete", "ttimodel", "doomed", "--timeout=30s")
    for kind in ("deployment", "service"):
        kube.wait(kind, "doomed", lambda obj: obj is None, f"{kind} garbage-collected")


def test_a_model_deleted_and_created_again_gets_children_of_its_own(kube: Kube) -> None:
    kube.apply(model("phoenix", model="stub"))
    old = kube.wait_ready("phoenix")["metadata"]["uid"]
    kube.run("delete", "ttimodel", "phoenix", "--timeout=30s")
    kube.apply(model("phoenix", model="stub", imageFormat="webp"))  # before the collection
    new = kube.wait_ready("phoenix")["metadata"]["uid"]
    assert new != old
    for kind in ("deployment", "service"):
        kube.wait(
            kind,
            "phoenix",
            lambda obj: (
                obj is not None
                and [ref["uid"] for ref in obj["metadata"]["ownerReferences"]] == [new]
            ),
            f"the {kind} owned by the new model",
        )
    c = server(kube.must_get("deployment", "phoenix"))
    assert c["args"][c["args"].index("--image-format") + 1] == "webp"


def test_more_gpus_than_any_node_is_unschedulable_with_the_schedulers_message(
    kube: Kube,
) -> None:
    kube.apply(model("greedy", model="sdxl-turbo", gpus=16))
    resource = kube.wait(
        "ttimodel",
        "greedy",
        lambda r: condition(r, "Ready").get("reason") == "Unschedulable",
        "Ready=False reason Unschedulable",
    )
    ready = condition(resource, "Ready")
    assert ready["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in ready["message"]
    assert condition(resource, "Degraded")["status"] == "True"
    assert resource["status"]["phase"] == "Unschedulable"


def test_a_model_from_the_hub_waits_for_the_model_cache_with_no_pod(kube: Kube) -> None:
    """The claim and the fetch Job as the real API server takes them (the fetch itself runs
    on the real node: tests/e2e/test_model_cache.py); deleting the model leaves the claim."""
    hub = {"huggingFace": {"repo": "org/never-fetched", "tokenSecret": {"name": "hf"}}}
    kube.apply(model("cached", model="sdxl-turbo", gpus=0, source=hub, cache={"enabled": True}))
    resource = kube.wait(
        "ttimodel",
        "cached",
        lambda r: r and r.get("status", {}).get("weights") and condition(r, "WeightsReady"),
        "status.weights and WeightsReady",
    )
    assert condition(resource, "WeightsReady")["status"] == "False"
    assert resource["status"]["phase"] in {"WaitingForWeights", "Downloading"}
    name = resource["status"]["weights"]["claim"]
    claim = kube.must_get("persistentvolumeclaim", name)
    job = kube.must_get("job", name)
    assert job["metadata"]["ownerReferences"][0]["uid"] == claim["metadata"]["uid"]
    assert kube.must_get("deployment", "cached")["spec"]["replicas"] == 0
    kube.run("delete", "ttimodel", "cached")
    kube.wait("deployment", "cached", lambda d: d is None, "the Deployment collected")
    assert kube.get("persistentvolumeclaim", name) is not None  # kept for the next model
    kube.run("delete", "persistentvolumeclaim", name, "--wait=false")


def test_a_missing_volume_claim_is_reported(kube: Kube) -> None:
    kube.apply(
        model(
            "no-claim",
            model="sdxl-turbo",
            source={"persistentVolumeClaim": {"claimName": "absent", "subPath": "turbo"}},
        )
    )
    resource = kube.wait(
        "ttimodel",
        "no-claim",
        lambda r: condition(r, "Degraded").get("status") == "True",
        "Degraded",
    )
    assert 'persistentvolumeclaim "absent" not found' in condition(resource, "Degraded")["message"]


def test_an_object_the_api_refuses_is_degraded_and_others_still_reconcile(kube: Kube) -> None:
    # valueFrom is passed through to the Deployment, whose own schema refuses the typo.
    kube.apply(model("refused", model="stub", env=[{"name": "X", "valueFrom": {"typo": {}}}]))
    resource = kube.wait(
        "ttimodel",
        "refused",
        lambda r: condition(r, "Degraded").get("reason") == "ApplyFailed",
        "Degraded reason ApplyFailed",
    )
    assert "typo" in condition(resource, "Degraded")["message"]
    kube.apply(model("fine", model="stub"))
    kube.wait_ready("fine")
    assert kube.operator.alive()


INVALID: dict[str, tuple[dict[str, Any], str]] = {
    "unknown model": ({"model": "dalle"}, "spec.model"),
    "negative gpus": ({"model": "stub", "gpus": -1}, "spec.gpus"),
    "unknown format": ({"model": "stub", "imageFormat": "gif"}, "spec.imageFormat"),
    "negative replicas": ({"model": "stub", "replicas": -1}, "spec.replicas"),
    "two sources": (
        {
            "model": "sdxl-turbo",
            "source": {"huggingFace": {"repo": "a/b"}, "hostPath": {"path": "/m"}},
        },
        "spec.source",
    ),
    "no source": ({"model": "sdxl-turbo", "source": {}}, "spec.source"),
    "relative host path": (
        {"model": "sdxl-turbo", "source": {"hostPath": {"path": "m"}}},
        "spec.source.hostPath.path",
    ),
    "escaping sub-path": (
        {
            "model": "sdxl-turbo",
            "source": {"persistentVolumeClaim": {"claimName": "w", "subPath": "../etc"}},
        },
        "spec.source.persistentVolumeClaim.subPath",
    ),
    "missing model": ({"gpus": 1}, "spec.model"),
    "autoscaling max below min": (
        {"model": "stub", "autoscaling": {"minReplicas": 3, "maxReplicas": 2}},
        "spec.autoscaling.maxReplicas must be at least spec.autoscaling.minReplicas",
    ),
    "autoscaling max below the default min": (
        {"model": "stub", "autoscaling": {"maxReplicas": 0}},
        "spec.autoscaling.maxReplicas",
    ),
    "autoscaling without max": (
        {"model": "stub", "autoscaling": {}},
        "spec.autoscaling.maxReplicas",
    ),
    "autoscaling target zero": (
        {"model": "stub", "autoscaling": {"maxReplicas": 2, "targetInFlight": 0}},
        "spec.autoscaling.targetInFlight",
    ),
    "access peer selecting nothing": (
        {"model": "stub", "access": {"from": [{}]}},
        "spec.access.from[] needs namespaceSelector, podSelector or both",
    ),
    "access expression without values": (
        {
            "model": "stub",
            "access": {
                "from": [{"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}]
            },
        },
        "matchExpressions values are required for In and NotIn",
    ),
    "access expression with values it cannot take": (
        {
            "model": "stub",
            "access": {
                "from": [
                    {
                        "namespaceSelector": {
                            "matchExpressions": [
                                {"key": "a", "operator": "Exists", "values": ["x"]}
                            ]
                        }
                    }
                ]
            },
        },
        "not allowed for Exists and DoesNotExist",
    ),
    "autoscaling negative min": (
        {"model": "stub", "autoscaling": {"maxReplicas": 2, "minReplicas": -1}},
        "spec.autoscaling.minReplicas",
    ),
    "unknown optimisation": ({"model": "stub", "optimisation": "fast"}, "spec.optimisation"),
    "cuda graphs on no GPU": (
        {"model": "sdxl-turbo", "gpus": 0, "optimisation": "compile-cudagraphs"},
        'spec.optimisation: Invalid value: "object": spec.optimisation compile-cudagraphs'
        " needs a GPU (spec.gpus >= 1); use compile on a CPU model",
    ),
    "cuda graphs on a model of no GPU by default": (
        {"model": "stub", "optimisation": "compile-cudagraphs"},
        "spec.optimisation compile-cudagraphs needs a GPU",
    ),
    "adapters of a compiled model": (
        {
            "model": "sdxl-turbo",
            "optimisation": "compile",
            "adapters": [{"name": "ink", "source": {"hostPath": {"path": "/loras/ink"}}}],
        },
        'spec.adapters: Invalid value: "object": spec.adapters need spec.optimisation none:'
        " compiled graphs are of the base model",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_resources_are_refused_at_apply_naming_the_field(kube: Kube, case: str) -> None:
    spec, field = INVALID[case]
    error = kube.run("apply", "-f", "-", input=json.dumps(model("bad", **spec)), check=False)
    assert field in error, error
    assert kube.get("ttimodel", "bad") is None


def test_optimisation_defaults_to_none_and_settings_that_fit_are_accepted(kube: Kube) -> None:
    """Dry runs on the API server: its defaulting, and the CEL rules letting these through
    (an unset gpus is one GPU for sdxl-turbo)."""
    fitting = {
        "unset": ({"model": "stub"}, "none"),
        "compile on a CPU": ({"model": "sdxl-turbo", "gpus": 0, "optimisation": "compile"}, None),
        "cuda graphs, default GPU": (
            {"model": "sdxl-turbo", "optimisation": "compile-cudagraphs"},
            None,
        ),
        "cuda graphs on stub with a GPU": (
            {"model": "stub", "gpus": 1, "optimisation": "compile-cudagraphs"},
            None,
        ),
        "adapters, none": (
            {
                "model": "sdxl-turbo",
                "optimisation": "none",
                "adapters": [{"name": "ink", "source": {"hostPath": {"path": "/loras/ink"}}}],
            },
            None,
        ),
    }
    for case, (spec, expected) in fitting.items():
        out = kube.run(
            "apply", "--dry-run=server", "-o", "json", "-f", "-",
            input=json.dumps(model("fits", **spec)),
        )  # fmt: skip
        stored = json.loads(out)["spec"]["optimisation"]
        assert stored == (expected or spec["optimisation"]), case


def test_every_optimisation_is_a_string_as_yaml_reads_it_bare(kube: Kube) -> None:
    """kubectl reads YAML 1.1, where a bare off or no would be a boolean: none of the values
    needs quoting."""
    for value in OPTIMISATIONS:
        manifest = "apiVersion: tti.dev/v1alpha1\nkind: TextToImageModel\nmetadata: {name: bare}\n"
        manifest += f"spec:\n  model: sdxl-turbo\n  gpus: 1\n  optimisation: {value}\n"
        out = kube.run("apply", "--dry-run=server", "-o", "json", "-f", "-", input=manifest)
        assert json.loads(out)["spec"]["optimisation"] == value


def test_a_name_too_long_for_the_children_is_refused(kube: Kube) -> None:
    name = "m" * 64
    error = kube.run("apply", "-f", "-", input=json.dumps(model(name, model="stub")), check=False)
    assert "metadata.name" in error and "63" in error, error


def test_an_operator_killed_mid_way_converges_after_restart(kube: Kube) -> None:
    kube.apply(model("survivor", model="stub"))
    kube.wait_ready("survivor")
    kube.operator.kill()
    # While it is down: a new resource, a spec change, and a deleted child.
    kube.apply(model("newcomer", model="stub", imageFormat="jpeg"))
    kube.run("patch", "ttimodel/survivor", "--type", "merge", "-p", '{"spec":{"replicas":2}}')
    kube.run("delete", "service", "survivor", "--wait=false")
    kube.wait("service", "survivor", lambda s: s is None, "the Service gone")
    assert kube.get("deployment", "newcomer") is None
    kube.operator.start()
    kube.wait_ready("newcomer")
    survivor = kube.wait(
        "ttimodel",
        "survivor",
        lambda r: r["status"].get("ready") == "2/2" and condition(r, "Ready")["status"] == "True",
        "survivor at 2/2",
    )
    assert survivor["status"]["observedGeneration"] == survivor["metadata"]["generation"]
    assert kube.get("service", "survivor") is not None


def chart_rules(namespace: str) -> list[dict[str, Any]]:
    """The operator's Role as the chart renders it for one watched namespace (the chart's
    rules are checked against docs/operator.md's table and the kinds table in tests/chart)."""
    objects = Helm(ensure_helm()).template(
        f"watchNamespaces={{{namespace}}}", "gateway.enabled=false"
    )
    [role] = [o for o in objects if o["kind"] == "Role"]
    return role["rules"]  # type: ignore[no-any-return]


def restricted_kubeconfig(kube: Kube, path: Path) -> Path:
    """A kubeconfig for a service account bound to the documented Role only."""
    ns = kube.namespace
    kube.run("create", "serviceaccount", "tti-operator")
    kube.apply(
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "tti-operator"},
            "rules": chart_rules(ns),
        }
    )
    kube.run(
        "create", "rolebinding", "tti-operator", "--role=tti-operator",
        f"--serviceaccount={ns}:tti-operator",
    )  # fmt: skip
    token = kube.run("create", "token", "tti-operator", "--duration=1h").strip()
    admin = json.loads(
        kube.cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout
    )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa", "namespace": ns}}],
        "current-context": "sa",
    }
    path.write_text(json.dumps(config))
    return path


def test_the_documented_rbac_is_enough_in_namespaced_mode(kube: Kube, tmp_path: Path) -> None:
    """The chart's rules (the table in docs/operator.md) and nothing else."""
    kube.operator.stop()  # the session's operator serves this namespace too
    kubeconfig = restricted_kubeconfig(kube, tmp_path / "kubeconfig")
    restricted = OperatorProcess(
        kube.cluster,
        tmp_path / "restricted.log",
        extra_env={"KUBECONFIG": str(kubeconfig), "TTI_OPERATOR_NAMESPACES": kube.namespace},
    )
    kube.operator = restricted
    restricted.start()
    try:
        kube.apply(model("limited", model="stub"))
        kube.wait_ready("limited")
        kube.run("delete", "service", "limited", "--wait=false")
        kube.wait("service", "limited", lambda s: s is not None, "the Service re-created")
        events = json.loads(
            kube.run(
                "get", "events", "--field-selector", "involvedObject.name=limited", "-o", "json"
            )
        )
        assert "Created" in {e["reason"] for e in events["items"]}
        log = restricted.log_tail(400)
        assert "forbidden" not in log.lower(), log
    finally:
        restricted.stop()


def test_a_namespace_it_may_not_read_does_not_hold_up_the_others(
    kube: Kube, tmp_path: Path
) -> None:
    """One listed namespace without the operator's RoleBinding (a typo in the list, a
    binding not yet applied) costs that namespace alone, not every model."""
    kube.operator.stop()  # the session's operator serves this namespace too
    kubeconfig = restricted_kubeconfig(kube, tmp_path / "kubeconfig")
    forbidden = f"{kube.namespace}-unbound"
    restricted = OperatorProcess(
        kube.cluster,
        tmp_path / "restricted.log",
        extra_env={
            "KUBECONFIG": str(kubeconfig),
            "TTI_OPERATOR_NAMESPACES": f"{forbidden},{kube.namespace}",
        },
    )
    kube.operator = restricted
    restricted.start()
    try:
        kube.apply(model("served", model="stub"))
        kube.wait_ready("served")
        assert f"namespaces/{forbidden}/" in restricted.log_tail(400)  # and it says why
    finally:
        restricted.stop()


def test_the_liveness_endpoint_answers(kube: Kube, tmp_path: Path) -> None:
    port = free_port()
    probed = OperatorProcess(
        kube.cluster,
        tmp_path / "probed.log",
        extra_env={
            "TTI_OPERATOR_LIVENESS_PORT": str(port),
            "TTI_OPERATOR_NAMESPACES": kube.namespace,
        },
    )
    probed.start()
    try:

        def healthz() -> dict[str, Any] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    return json.loads(r.read())  # type: ignore[no-any-return]
            except OSError:
                return None

        answer = wait_for(healthz, lambda a: a is not None, "/healthz", operator=probed)
        assert answer is not None and answer["models"] == 0
    finally:
        probed.stop()
