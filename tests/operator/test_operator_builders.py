"""The pure builders: the Deployment, Service and NetworkPolicy a TextToImageModel turns
into."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tti_operator.builders import (
    GPU_RESOURCE,
    Owner,
    build_deployment,
    build_network_policy,
    build_service,
    desired_children,
    selector_labels,
    selector_string,
)
from tti_operator.settings import OperatorSettings
from tti_operator.spec import parse_spec
from tti_operator.weights import Weights, WeightsState, entry_for
from tti_server.cli import load_settings

OWNER = Owner(name="turbo", namespace="ml", uid="1234-abcd")
IMAGE = "registry.example/tti-server:1.0"
SETTINGS = OperatorSettings(server_image=IMAGE)
NO_PLAYGROUND = OperatorSettings(server_image=IMAGE, playground=False)


def deployment(**spec: Any) -> dict[str, Any]:
    return build_deployment(OWNER, parse_spec(spec), SETTINGS)


def container(dep: dict[str, Any]) -> dict[str, Any]:
    containers = dep["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]  # type: ignore[no-any-return]


def arg(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None


def policy(settings: OperatorSettings | None = None, **spec: Any) -> dict[str, Any]:
    return build_network_policy(OWNER, parse_spec({"model": "stub", **spec}), settings or CHART)


#: The operator as the chart runs it: release `tti` in `tti-system`.
CHART = OperatorSettings(
    own_namespace="tti-system",
    own_pod_labels={
        "app.kubernetes.io/name": "tti-operator",
        "app.kubernetes.io/instance": "tti",
        "app.kubernetes.io/component": "operator",
    },
    gateway_pod_labels={
        "app.kubernetes.io/name": "tti-operator-gateway",
        "app.kubernetes.io/instance": "tti",
        "app.kubernetes.io/component": "gateway",
    },
)


def test_children_are_owned_by_the_resource_as_controller() -> None:
    for child in (deployment(model="stub"), build_service(OWNER), policy()):
        meta = child["metadata"]
        assert (meta["name"], meta["namespace"]) == ("turbo", "ml")
        assert meta["ownerReferences"] == [
            {
                "apiVersion": "tti.dev/v1alpha1",
                "kind": "TextToImageModel",
                "name": "turbo",
                "uid": "1234-abcd",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "tti-operator"
        assert meta["labels"]["tti.dev/model"] == "turbo"


def test_sdxl_turbo_gets_one_gpu_the_toleration_and_its_repo_by_default() -> None:
    dep = deployment(model="sdxl-turbo")
    c = container(dep)
    assert c["resources"]["limits"][GPU_RESOURCE] == 1
    assert GPU_RESOURCE not in c["resources"]["requests"]
    assert dep["spec"]["template"]["spec"]["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]
    assert arg(c["args"], "--model") == "sdxl-turbo"
    assert arg(c["args"], "--model-path") == "stabilityai/sdxl-turbo"
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["HF_HOME"] == "/cache/huggingface"
    # GPU rollouts replace pods one at a time rather than needing a spare GPU.
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


def test_stub_runs_on_cpu_without_gpu_limits_or_toleration() -> None:
    dep = deployment(model="stub")
    c = container(dep)
    assert GPU_RESOURCE not in c["resources"]["limits"]
    assert "tolerations" not in dep["spec"]["template"]["spec"]
    assert arg(c["args"], "--model-path") is None
    assert dep["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}


def test_server_flags_follow_the_spec() -> None:
    c = container(
        deployment(model="stub", imageFormat="webp", maxBatchSize=8, batchWaitMs=5, replicas=3)
    )
    args = c["args"]
    assert arg(args, "--image-format") == "webp"
    assert arg(args, "--max-batch-size") == "8"
    assert arg(args, "--batch-wait-ms") == "5"
    assert arg(args, "--port") == "8080"
    assert arg(args, "--grpc-port") == "8085"
    assert arg(args, "--host") == "0.0.0.0"
    assert deployment(model="stub", replicas=3)["spec"]["replicas"] == 3


def test_the_served_model_id_is_the_resource_name_not_the_backend() -> None:
    for backend in ("stub", "sdxl-turbo"):
        args = container(deployment(model=backend))["args"]
        assert arg(args, "--model") == backend
        assert arg(args, "--model-id") == "turbo"


def test_the_real_server_cli_accepts_the_args_and_serves_the_resource_name() -> None:
    dep = build_deployment(
        Owner(name="turbo-a", namespace="ml", uid="u"),
        parse_spec({"model": "sdxl-turbo", "imageFormat": "webp", "maxBatchSize": 2}),
        SETTINGS,
    )
    settings = load_settings(container(dep)["args"])
    assert settings.served_model_id == "turbo-a"
    assert (settings.model, settings.image_format, settings.max_batch_size) == (
        "sdxl-turbo",
        "webp",
        2,
    )


def test_image_defaults_to_the_operator_setting_and_is_overridable() -> None:
    assert container(deployment(model="stub"))["image"] == IMAGE
    assert container(deployment(model="stub", image="mine:2"))["image"] == "mine:2"


def test_probes_use_readyz_healthz_and_a_long_startup_budget() -> None:
    c = container(deployment(model="sdxl-turbo"))
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 20 * 60
    assert c["ports"] == [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "grpc", "containerPort": 8085, "protocol": "TCP"},
    ]


def test_security_context_is_hardened_with_a_writable_cache() -> None:
    dep = deployment(model="sdxl-turbo")
    pod = dep["spec"]["template"]["spec"]
    c = container(dep)
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/cache"] == "cache" and mounts["/tmp"] == "tmp"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes["cache"] and "emptyDir" in volumes["tmp"]
    assert pod["automountServiceAccountToken"] is False


def test_prometheus_scrape_annotations() -> None:
    annotations = deployment(model="stub")["spec"]["template"]["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "8080",
        "prometheus.io/path": "/metrics",
    }


def test_pvc_source_mounts_the_sub_path_read_only_at_a_fixed_path() -> None:
    dep = deployment(
        model="sdxl-turbo",
        source={"persistentVolumeClaim": {"claimName": "weights", "subPath": "sdxl/turbo"}},
    )
    pod = dep["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["weights"]["persistentVolumeClaim"] == {"claimName": "weights", "readOnly": True}
    c = container(dep)
    mount = next(m for m in c["volumeMounts"] if m["name"] == "weights")
    assert mount == {
        "name": "weights",
        "mountPath": "/models",
        "subPath": "sdxl/turbo",
        "readOnly": True,
    }
    assert arg(c["args"], "--model-path") == "/models"


def test_host_path_source_mounts_the_directory() -> None:
    dep = deployment(model="sdxl-turbo", source={"hostPath": {"path": "/data/turbo"}})
    volumes = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert volumes["weights"]["hostPath"] == {"path": "/data/turbo", "type": "Directory"}
    assert arg(container(dep)["args"], "--model-path") == "/models"


def test_user_resources_merge_over_defaults_and_gpus_come_from_spec_only() -> None:
    c = container(
        deployment(
            model="sdxl-turbo",
            gpus=2,
            resources={"requests": {"cpu": "8"}, "limits": {GPU_RESOURCE: 7, "memory": "64Gi"}},
        )
    )
    assert c["resources"]["requests"]["cpu"] == "8"
    assert c["resources"]["requests"]["memory"] == "12Gi"  # the default survives
    assert c["resources"]["limits"] == {"memory": "64Gi", GPU_RESOURCE: 2}


def test_scheduling_fields_pass_through_and_gpu_toleration_comes_first() -> None:
    pod = deployment(
        model="sdxl-turbo",
        nodeSelector={"pool": "a100"},
        tolerations=[{"key": "spot", "operator": "Exists"}],
    )["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "a100"}
    assert [t["key"] for t in pod["tolerations"]] == ["nvidia.com/gpu", "spot"]


def test_user_env_is_appended_and_can_override_the_cache_variables() -> None:
    env = container(
        deployment(
            model="stub",
            env=[{"name": "HF_HOME", "value": "/elsewhere"}, {"name": "A", "value": "1"}],
        )
    )["env"]
    values = {e["name"]: e["value"] for e in env}
    assert values["HF_HOME"] == "/elsewhere"
    assert values["A"] == "1"
    assert [e["name"] for e in env].count("HF_HOME") == 1


def test_playground_off_reaches_every_model_pod_unless_its_spec_sets_it_back() -> None:
    spec = parse_spec({"model": "stub"})
    names = [e["name"] for e in container(build_deployment(OWNER, spec, SETTINGS))["env"]]
    assert "TTI_PLAYGROUND" not in names  # on: existing pod templates stay as they were
    off = container(build_deployment(OWNER, spec, NO_PLAYGROUND))["env"]
    assert {"name": "TTI_PLAYGROUND", "value": "false"} in off
    back = parse_spec({"model": "stub", "env": [{"name": "TTI_PLAYGROUND", "value": "true"}]})
    env = container(build_deployment(OWNER, back, NO_PLAYGROUND))["env"]
    assert [e for e in env if e["name"] == "TTI_PLAYGROUND"] == [
        {"name": "TTI_PLAYGROUND", "value": "true"}
    ]


def test_service_selects_exactly_the_models_pods_on_ports_http_and_grpc() -> None:
    svc = build_service(OWNER)
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 8085, "targetPort": "grpc", "protocol": "TCP"},
    ]
    dep = deployment(model="stub")
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert svc["spec"]["selector"].items() <= pod_labels.items()
    assert svc["spec"]["selector"]["tti.dev/model"] == "turbo"
    other = selector_labels("other")
    assert other != svc["spec"]["selector"]


def test_selector_string_matches_the_selector_labels() -> None:
    assert selector_string("turbo") == "app.kubernetes.io/name=tti-server,tti.dev/model=turbo"


def test_builders_are_deterministic() -> None:
    assert deployment(model="sdxl-turbo", gpus=3) == deployment(model="sdxl-turbo", gpus=3)


# The optimisation setting.

COMMIT = "c0ffee"


def cached(raw: dict[str, Any]) -> Weights:
    """The model's cache entry, fetched at COMMIT."""
    entry = entry_for(OWNER.namespace, parse_spec(raw), SETTINGS)
    assert entry is not None
    return Weights(entry, WeightsState("Cached", "cached", COMMIT))


def template(raw: dict[str, Any], weights: Weights | None = None) -> dict[str, Any]:
    dep = build_deployment(OWNER, parse_spec(raw), SETTINGS, weights)
    return dep["spec"]["template"]  # type: ignore[no-any-return]


#: One spec per way the weights arrive: the model cache, a pod's own download, a claim of
#: the user's, a host path, none at all.
WEIGHTS_CASES: dict[str, dict[str, Any]] = {
    "cached": {"model": "sdxl-turbo"},
    "own download": {"model": "sdxl-turbo", "cache": {"enabled": False}},
    "pvc": {"model": "sdxl-turbo", "source": {"persistentVolumeClaim": {"claimName": "w"}}},
    "host path": {"model": "sdxl-turbo", "source": {"hostPath": {"path": "/data/turbo"}}},
    "stub": {"model": "stub"},
}


def weights_for(case: str) -> Weights | None:
    return cached(WEIGHTS_CASES[case]) if case == "cached" else None


@pytest.mark.parametrize("case", sorted(WEIGHTS_CASES))
def test_a_model_left_off_keeps_its_pod_template_byte_for_byte(case: str) -> None:
    """The API server now fills in `optimisation: none`; the pods of every model that had no
    such field must come out as before, or upgrading the operator would roll them all out:
    no flag, no mount, the claims read-only and the cache volume's size as it was."""
    raw = WEIGHTS_CASES[case]
    unset = template(raw, weights_for(case))
    off = template({**raw, "optimisation": "none"}, weights_for(case))
    assert json.dumps(off, sort_keys=True) == json.dumps(unset, sort_keys=True)
    assert "optimisation" not in json.dumps(off) and "compile" not in json.dumps(off)
    volumes = {v["name"]: v for v in off["spec"]["volumes"]}
    assert volumes["cache"]["emptyDir"]["sizeLimit"] == (
        "32Gi" if case == "own download" else "2Gi"
    )
    claims = [v["persistentVolumeClaim"] for v in volumes.values() if "persistentVolumeClaim" in v]
    assert all(claim["readOnly"] is True for claim in claims)


def test_compiling_with_the_model_cache_writes_beside_the_weights() -> None:
    raw = {"model": "sdxl-turbo", "optimisation": "compile"}
    pod = template(raw, cached(raw))["spec"]
    c = pod["containers"][0]
    assert arg(c["args"], "--optimisation") == "compile"
    assert arg(c["args"], "--compile-cache-dir") == "/compile-cache"
    # One volume, two mounts: the weights read-only, the commit's artefacts read-write (a
    # read-only claim would make both read-only).
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["weights"]["persistentVolumeClaim"] == {"claimName": cached(raw).entry.name}
    mounts = [m for m in c["volumeMounts"] if m["name"] == "weights"]
    assert mounts == [
        {"name": "weights", "mountPath": "/weights", "readOnly": True},
        {
            "name": "weights",
            "mountPath": "/compile-cache",
            "subPath": f"tti/models--stabilityai--sdxl-turbo/{COMMIT}/artefacts",
        },
    ]
    assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"]
    # The writable claim's files keep the group the fetch gave them: none is walked.
    assert pod["securityContext"]["fsGroupChangePolicy"] == "OnRootMismatch"
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache["emptyDir"]["sizeLimit"] == "2Gi"  # the graphs are in the claim


#: Without the model cache: where the graphs go and how large the pod's cache volume is.
OWN_COMPILE_CACHE = {"own download": "40Gi", "pvc": "10Gi", "host path": "10Gi"}


@pytest.mark.parametrize("case", sorted(OWN_COMPILE_CACHE))
def test_compiling_without_the_model_cache_uses_the_pods_own_cache(case: str) -> None:
    pod = template({**WEIGHTS_CASES[case], "optimisation": "compile-cudagraphs"})["spec"]
    c = pod["containers"][0]
    assert arg(c["args"], "--optimisation") == "compile-cudagraphs"
    assert arg(c["args"], "--compile-cache-dir") == "/cache/compile"
    assert not any(m["mountPath"] == "/compile-cache" for m in c["volumeMounts"])
    cache = next(v for v in pod["volumes"] if v["name"] == "cache")
    assert cache["emptyDir"]["sizeLimit"] == OWN_COMPILE_CACHE[case]
    for volume in pod["volumes"]:
        if "persistentVolumeClaim" in volume and volume["name"] == "weights":
            assert volume["persistentVolumeClaim"]["readOnly"] is True


def test_a_model_waiting_for_its_weights_does_not_mount_an_artefacts_folder_yet() -> None:
    """No commit, no folder: the pods (none run yet) would compile into their own cache."""
    raw = {"model": "sdxl-turbo", "optimisation": "compile"}
    waiting = Weights(cached(raw).entry, WeightsState("Downloading", "1 GB of 7 GB"))
    c = template(raw, waiting)["spec"]["containers"][0]
    assert arg(c["args"], "--compile-cache-dir") == "/cache/compile"
    assert [m["mountPath"] for m in c["volumeMounts"] if m["name"] == "weights"] == ["/weights"]


# The NetworkPolicy.

GATEWAY = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tti-system"}},
    "podSelector": {
        "matchLabels": {
            "app.kubernetes.io/name": "tti-operator-gateway",
            "app.kubernetes.io/instance": "tti",
            "app.kubernetes.io/component": "gateway",
        }
    },
}
OPERATOR = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "tti-system"}},
    "podSelector": {
        "matchLabels": {
            "app.kubernetes.io/name": "tti-operator",
            "app.kubernetes.io/instance": "tti",
            "app.kubernetes.io/component": "operator",
        }
    },
}
HTTP = [{"protocol": "TCP", "port": 8080}]
BOTH_APIS = [{"protocol": "TCP", "port": 8080}, {"protocol": "TCP", "port": 8085}]


def test_the_policy_guards_exactly_the_models_pods_for_ingress_only() -> None:
    spec = policy()["spec"]
    assert spec["podSelector"] == {"matchLabels": deployment(model="stub")["spec"]["selector"][
        "matchLabels"]}  # fmt: skip
    assert spec["policyTypes"] == ["Ingress"]  # the model still downloads its weights


def test_by_default_the_gateway_the_operator_and_the_models_own_namespace_get_in() -> None:
    assert policy()["spec"]["ingress"] == [
        # The gateway forwards HTTP; the operator's autoscaler reads /metrics there.
        {"from": [GATEWAY, OPERATOR], "ports": HTTP},
        # A podSelector alone: every pod of the policy's (the model's) own namespace.
        {"from": [{"podSelector": {}}], "ports": BOTH_APIS},
    ]


def test_spec_access_names_the_callers_of_both_apis() -> None:
    team = {"namespaceSelector": {"matchLabels": {"team": "ml"}}}
    clients = {
        "namespaceSelector": {
            "matchExpressions": [{"key": "env", "operator": "In", "values": ["dev", "prod"]}]
        },
        "podSelector": {"matchLabels": {"app": "caikit-client"}},
    }
    rules = policy(access={"from": [team, clients]})["spec"]["ingress"]
    assert rules[1] == {"from": [team, clients], "ports": BOTH_APIS}
    assert policy(access={"from": [{"namespaceSelector": {}}]})["spec"]["ingress"][1] == {
        "from": [{"namespaceSelector": {}}],  # every namespace: an empty selector stays
        "ports": BOTH_APIS,
    }


def test_access_from_nobody_leaves_no_rule_that_would_let_everyone_in() -> None:
    """An ingress rule without `from` admits every source: no callers, no rule at all."""
    rules = policy(access={"from": []})["spec"]["ingress"]
    assert rules == [{"from": [GATEWAY, OPERATOR], "ports": HTTP}]
    assert all(rule.get("from") for rule in policy()["spec"]["ingress"])


def test_the_gateway_may_live_elsewhere_and_metrics_scrapers_read_the_http_port() -> None:
    settings = CHART.model_copy(
        update={
            "gateway_namespace": "edge",
            "metrics_scrapers": OperatorSettings.model_validate(
                {"metrics_scrapers": [{"namespaceSelector": {"matchLabels": {"m": "y"}}}]}
            ).metrics_scrapers,
        }
    )
    [platform, _] = policy(settings)["spec"]["ingress"]
    gateway, operator, scraper = platform["from"]
    assert gateway["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "edge"}}
    assert operator == OPERATOR
    assert scraper == {"namespaceSelector": {"matchLabels": {"m": "y"}}}
    assert platform["ports"] == HTTP


def test_the_operators_defaults_match_the_charts_labels_less_the_release() -> None:
    [platform, _] = policy(OperatorSettings())["spec"]["ingress"]
    gateway, operator = platform["from"]
    assert gateway["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "tti-operator-gateway",
        "app.kubernetes.io/component": "gateway",
    }
    assert operator["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "tti-system"
    }


def test_the_policy_is_applied_first_and_only_while_the_setting_is_on() -> None:
    spec = parse_spec({"model": "stub"})
    kinds = [c["kind"] for c in desired_children(OWNER, spec, CHART)]
    assert kinds == ["NetworkPolicy", "ConfigMap", "Deployment", "Service"]
    off = CHART.model_copy(update={"network_policies": False})
    built = [c["kind"] for c in desired_children(OWNER, spec, off)]
    assert built == ["ConfigMap", "Deployment", "Service"]
