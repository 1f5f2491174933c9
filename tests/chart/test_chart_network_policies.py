"""The chart's NetworkPolicies, rendered by the real helm: the operator's and the gateway's
own, the operator told the labels and namespace its models' policies let in, one switch.

That the policies hold on a real node with a real engine is tests/e2e/test_network_policies.py.
"""

from __future__ import annotations

from typing import Any

import pytest
from support.helm import Helm, objects_of, one

from chart.test_chart_render import env_of, is_gateway, operator_container, operator_part
from tti_operator.builders import Owner, build_network_policy
from tti_operator.settings import OperatorSettings
from tti_operator.spec import parse_spec


def policies(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The operator's and the gateway's NetworkPolicy."""
    found = objects_of(objects, "NetworkPolicy")
    operator = one(operator_part(found), "NetworkPolicy")
    gateway = one([o for o in found if is_gateway(o)], "NetworkPolicy")
    return operator, gateway


def pod_labels(objects: list[dict[str, Any]], gateway: bool) -> dict[str, str]:
    [deployment] = [o for o in objects_of(objects, "Deployment") if is_gateway(o) == gateway]
    return deployment["spec"]["template"]["metadata"]["labels"]  # type: ignore[no-any-return]


def test_the_operator_accepts_only_its_liveness_port(helm: Helm) -> None:
    objects = helm.template("operator.livenessPort=9000")
    operator, _ = policies(objects)
    spec = operator["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels(objects, False).items()
    assert not spec["podSelector"]["matchLabels"].items() <= pod_labels(objects, True).items()
    assert spec["policyTypes"] == ["Ingress"]
    assert spec["ingress"] == [{"ports": [{"protocol": "TCP", "port": 9000}]}]
    assert operator["metadata"]["namespace"] == "tti-system"


def test_the_gateway_serves_anyone_and_its_metrics_only_the_operator(helm: Helm) -> None:
    objects = helm.template()
    _, gateway = policies(objects)
    spec = gateway["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels(objects, True).items()
    assert spec["policyTypes"] == ["Ingress"]
    clients, metrics = spec["ingress"]
    # No `from`: every source, in the cluster or not (its tokens decide).
    assert clients == {"ports": [{"protocol": "TCP", "port": "http"}]}
    [operator] = metrics["from"]
    assert operator["podSelector"]["matchLabels"].items() <= pod_labels(objects, False).items()


def test_gateway_clients_and_metrics_scrapers_come_from_the_values(helm: Helm) -> None:
    team = {"namespaceSelector": {"matchLabels": {"team": "apps"}}}
    monitoring = {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
    values = {"networkPolicies": {"gatewayClients": [team], "metricsNamespaceSelector": monitoring}}
    objects = helm.template(values=values)
    _, gateway = policies(objects)
    clients, metrics = gateway["spec"]["ingress"]
    assert clients["from"] == [team]
    assert metrics["from"][1:] == [{"namespaceSelector": monitoring}]
    env = env_of(operator_container(objects))
    assert env["TTI_OPERATOR_METRICS_SCRAPERS"] == '[{"namespaceSelector":' + (
        '{"matchLabels":{"kubernetes.io/metadata.name":"monitoring"}}}]'
    )


def test_the_operator_lets_in_exactly_the_charts_gateway_and_operator_pods(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The labels the operator is told pick the release's pods: a model's policy built from
    the chart's environment admits the gateway's and the operator's pods, in the release's
    namespace."""
    objects = helm.template(release="edge", namespace="platform")
    for name, value in env_of(operator_container(objects)).items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    assert settings.network_policies
    owner = Owner("m", "team-a", "uid")
    policy = build_network_policy(owner, parse_spec({"model": "stub"}), settings)
    gateway_peer, operator_peer = policy["spec"]["ingress"][0]["from"]
    for peer, gateway in ((gateway_peer, True), (operator_peer, False)):
        assert peer["namespaceSelector"] == {
            "matchLabels": {"kubernetes.io/metadata.name": "platform"}
        }
        assert peer["podSelector"]["matchLabels"].items() <= pod_labels(objects, gateway).items()
    assert (
        not operator_peer["podSelector"]["matchLabels"].items() <= pod_labels(objects, True).items()
    )


def test_one_switch_turns_every_policy_off_the_models_too(helm: Helm) -> None:
    objects = helm.template("networkPolicies.enabled=false")
    assert objects_of(objects, "NetworkPolicy") == []
    assert env_of(operator_container(objects))["TTI_OPERATOR_NETWORK_POLICIES"] == "false"
    no_gateway = helm.template("gateway.enabled=false")
    assert [p["metadata"]["name"] for p in objects_of(no_gateway, "NetworkPolicy")] == [
        "tti-tti-operator"
    ]


def test_the_helm_test_pod_calls_the_model_from_the_models_own_namespace(helm: Helm) -> None:
    """There the model's default policy lets it in, as any client beside the model; its
    calls wait until the engine lets the new pod in (kube-router learns its address late)."""
    values = {"models": [{"name": "m", "namespace": "team-a", "spec": {"model": "stub"}}]}
    pod = one(helm.template(values=values), "Pod")
    assert pod["metadata"]["namespace"] == "team-a"
    [admitted] = pod["spec"]["initContainers"]
    assert admitted["command"][3:] == ["m.team-a.svc", "8080", "120"]
    assert admitted["securityContext"] == pod["spec"]["containers"][0]["securityContext"]
    off = one(helm.template("networkPolicies.enabled=false", values=values), "Pod")
    assert "initContainers" not in off["spec"]


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (["networkPolicies.enable=true"], "enable"),
        (["networkPolicies.gatewayClients[0].podSelectr.a=b"], "podSelectr"),
        (["networkPolicies.metricsNamespaceSelector.matchLabel.a=b"], "metricsNamespaceSelector"),
    ],
    ids=["typo", "bad-peer", "bad-selector"],
)
def test_schema_rejects_bad_network_policy_values(
    helm: Helm, values: list[str], named: str
) -> None:
    result = helm.render(*values, check=False)
    assert result.returncode != 0, f"{values} was accepted"
    assert named in result.stderr, result.stderr
