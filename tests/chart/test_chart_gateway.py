"""The chart's gateway, rendered by the real helm: on by default, its own ServiceAccount and
least-privilege RBAC (exactly the table in docs/gateway.md), hardened like the operator,
its settings passed as the variables `GatewaySettings` reads, the operator told its URL.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from support.helm import CHART, Helm, objects_of, one

from chart.test_chart_render import env_of, granted, is_gateway, operator_container, operator_part
from tti_gateway.settings import GatewaySettings

ROOT = Path(__file__).resolve().parents[2]
NAME = "tti-tti-operator-gateway"  # release "tti", chart "tti-operator"


def gateway_part(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [o for o in objects if is_gateway(o)]


def gateway_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(gateway_part(objects), "Deployment")["spec"]["template"]["spec"]
    [container] = pod["containers"]
    return container  # type: ignore[no-any-return]


def documented_rbac() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) from docs/gateway.md's RBAC table: what the gateway calls."""
    section = (ROOT / "docs" / "gateway.md").read_text().split("## RBAC", 1)[1]
    triples = set()
    for line in section.split("\n## ", 1)[0].splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in {"API group", ""} or set(cells[0]) <= {"-"}:
            continue
        for verb in cells[2].split(","):
            triples.add((cells[0], cells[1], verb.strip().strip("`")))
    return triples


def test_defaults_run_the_gateway_with_its_own_account_and_cluster_role(helm: Helm) -> None:
    objects = gateway_part(helm.template())
    assert sorted(o["kind"] for o in objects) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "Service",
        "ServiceAccount",
    ]
    assert {o["metadata"]["name"] for o in objects} == {NAME}
    binding = one(objects, "ClusterRoleBinding")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": NAME, "namespace": "tti-system"}
    ]
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == NAME


def test_disabled_gateway_renders_nothing_and_the_operator_gets_no_url(helm: Helm) -> None:
    objects = helm.template("gateway.enabled=false")
    assert gateway_part(objects) == []
    assert "TTI_OPERATOR_GATEWAY_URL" not in env_of(operator_container(objects))


def test_the_operator_is_told_the_gateway_services_metrics_url(helm: Helm) -> None:
    """The autoscaler reads /metrics, which is on the metrics port only."""
    objects = helm.template("gateway.service.port=8000", "gateway.metricsPort=9100")
    service = one(gateway_part(objects), "Service")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8000, "targetPort": "http", "protocol": "TCP"},
        {"name": "metrics", "port": 9100, "targetPort": "metrics", "protocol": "TCP"},
    ]
    url = env_of(operator_container(objects))["TTI_OPERATOR_GATEWAY_URL"]
    assert url == f"http://{service['metadata']['name']}.tti-system.svc:9100"


def test_metrics_have_their_own_port_and_the_scrape_annotations_name_it(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = helm.template("gateway.metricsPort=9100")
    container = gateway_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": 8080, "metrics": 9100}
    template = one(gateway_part(objects), "Deployment")["spec"]["template"]["metadata"]
    assert template["annotations"] == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": "9100",
        "prometheus.io/path": "/metrics",
    }
    for name, value in env_of(container).items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    assert (settings.port, settings.metrics_port) == (ports["http"], ports["metrics"])


def test_trusted_proxies_and_client_limits_reach_the_gateway(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = helm.template(
        "gateway.trustedProxies={10.0.0.0/8,192.168.1.7}",
        "gateway.clientLimits.maxHeaderBytes=16384",
        "gateway.clientLimits.headerTimeoutSeconds=4",
    )
    for name, value in env_of(gateway_container(objects)).items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    assert [str(n) for n in settings.trusted_proxies] == ["10.0.0.0/8", "192.168.1.7/32"]
    assert (settings.max_header_bytes, settings.header_timeout) == (16384, 4.0)
    assert (settings.max_headers, settings.body_timeout, settings.keepalive_timeout) == (
        100,
        30.0,
        5.0,
    )
    assert "TTI_GATEWAY_TRUSTED_PROXIES" not in env_of(gateway_container(helm.template()))


def test_the_services_selector_picks_the_gateway_pods_and_not_the_operators(helm: Helm) -> None:
    objects = helm.template()
    selector = one(gateway_part(objects), "Service")["spec"]["selector"]
    gateway_pod = one(gateway_part(objects), "Deployment")["spec"]["template"]["metadata"]
    operator_pod = one(operator_part(objects), "Deployment")["spec"]["template"]["metadata"]
    assert selector.items() <= gateway_pod["labels"].items()
    operator_selector = one(operator_part(objects), "Deployment")["spec"]["selector"]
    assert not operator_selector["matchLabels"].items() <= gateway_pod["labels"].items()
    assert not selector.items() <= operator_pod["labels"].items()


def test_namespaced_gateway_has_roles_in_each_namespace_and_nothing_cluster_wide(
    helm: Helm,
) -> None:
    objects = gateway_part(helm.template("watchNamespaces={team-a,team-b}"))
    assert not objects_of(objects, "ClusterRole") + objects_of(objects, "ClusterRoleBinding")
    for kind in ("Role", "RoleBinding"):
        assert sorted(o["metadata"]["namespace"] for o in objects_of(objects, kind)) == [
            "team-a",
            "team-b",
        ]
    env = env_of(gateway_container(objects))
    assert env["TTI_GATEWAY_NAMESPACES"] == "team-a,team-b"


def test_gateway_rbac_is_exactly_what_the_gateway_docs_list(helm: Helm) -> None:
    """docs/gateway.md lists the calls the gateway makes (its cluster tests run it under the
    chart's Role and nothing else); no Secrets, no Pods, nothing it does not call."""
    documented = documented_rbac()
    assert ("tti.dev", "texttoimagemodels/scale", "patch") in documented  # the table was parsed
    for objects in (helm.template(), helm.template("watchNamespaces={team-a}")):
        roles = objects_of(gateway_part(objects), "ClusterRole")
        roles += objects_of(gateway_part(objects), "Role")
        assert roles
        for role in roles:
            assert granted(role["rules"]) == documented, role["kind"]


def test_gateway_pod_is_probed_and_hardened_like_the_operator(helm: Helm) -> None:
    objects = helm.template()
    operator_pod = one(operator_part(objects), "Deployment")["spec"]["template"]["spec"]
    gateway_pod = one(gateway_part(objects), "Deployment")["spec"]["template"]["spec"]
    assert gateway_pod["securityContext"] == operator_pod["securityContext"]
    container = gateway_container(objects)
    assert container["securityContext"] == operator_container(objects)["securityContext"]
    assert container["image"] == operator_container(objects)["image"]
    assert container["command"] == ["tti-gateway"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["ports"][0] == {"name": "http", "containerPort": 8080, "protocol": "TCP"}


def test_gateway_env_is_what_its_settings_read(helm: Helm, monkeypatch: pytest.MonkeyPatch) -> None:
    objects = helm.template(
        "gateway.holdTimeoutSeconds=30",
        "gateway.maxHeld=7",
        "gateway.maxBodyBytes=65536",
        "gateway.auth.secretName=gateway-tokens",
    )
    container = gateway_container(objects)
    env = env_of(container)
    fields = {f"TTI_GATEWAY_{name.upper()}" for name in GatewaySettings.model_fields}
    assert set(env) <= fields, set(env) - fields
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    assert settings.source == "cluster" and settings.namespaces == []
    assert (settings.hold_timeout, settings.max_held, settings.max_body_bytes) == (30, 7, 65536)
    assert settings.port == container["ports"][0]["containerPort"]
    # The tokens file is the Secret's key, mounted read-only.
    assert settings.auth_tokens_file == Path("/etc/tti-gateway/tokens/tokens")
    assert settings.playground  # the chart's top-level `playground`, true by default
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "tokens"]
    assert mount == {"name": "tokens", "mountPath": "/etc/tti-gateway/tokens", "readOnly": True}
    pod = one(gateway_part(objects), "Deployment")["spec"]["template"]["spec"]
    [volume] = [v for v in pod["volumes"] if v["name"] == "tokens"]
    assert volume["secret"]["secretName"] == "gateway-tokens"


def test_the_playground_value_turns_the_gateways_page_off_too(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One switch for every page: the models' (the operator's env) and the gateway's."""
    objects = helm.template("playground=false")
    env = env_of(gateway_container(objects))
    assert env["TTI_GATEWAY_PLAYGROUND"] == "false"
    monkeypatch.setenv("TTI_GATEWAY_PLAYGROUND", env["TTI_GATEWAY_PLAYGROUND"])
    assert not GatewaySettings().playground
    assert env_of(operator_container(objects))["TTI_OPERATOR_PLAYGROUND"] == "false"


def test_no_auth_by_default_and_no_tokens_mounted(helm: Helm) -> None:
    container = gateway_container(helm.template())
    assert "TTI_GATEWAY_AUTH_TOKENS_FILE" not in env_of(container)
    assert [m["name"] for m in container["volumeMounts"]] == ["tmp"]


def notes(helm: Helm, *values: str) -> str:
    """NOTES.txt rendered by helm's template engine: `helm install --dry-run` wants a
    cluster, so a copy of the chart carries it as one more template, printed as rendered
    (`--debug`, since it is not YAML)."""
    with tempfile.TemporaryDirectory() as scratch:
        chart = Path(scratch) / "tti-operator"
        shutil.copytree(CHART, chart)
        shutil.copy(chart / "templates" / "NOTES.txt", chart / "templates" / "notes.yaml")
        args = ["template", "tti", str(chart), "-n", "tti-system", "--debug"]
        args += ["--show-only", "templates/notes.yaml"]
        for value in values:
            args += ["--set", value]
        return helm.run(*args, check=False).stdout


def test_notes_show_the_one_url_and_an_openai_call(helm: Helm) -> None:
    url = f"http://{NAME}.tti-system.svc:80"
    text = notes(helm)
    assert "tti-operator 0.1.0 is installed" in text  # rendered at all
    assert url in text and f'OpenAI(base_url="{url}/v1"' in text
    assert "no authentication" in text
    text = notes(helm, "gateway.auth.secretName=gateway-tokens")
    assert 'api_key="<a token from Secret gateway-tokens, key tokens>"' in text
    assert "no authentication" not in text
    assert url not in notes(helm, "gateway.enabled=false")


def test_notes_show_how_to_open_the_gateways_playground_unless_it_is_off(helm: Helm) -> None:
    forward = f"kubectl port-forward -n tti-system svc/{NAME} 8080:80"
    assert forward in notes(helm)
    assert forward not in notes(helm, "playground=false")


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (["gateway.replica=2"], "replica"),
        (["gateway.service.type=Ingress"], "type"),
        (["gateway.maxBodyBytes=10"], "maxBodyBytes"),
        (["gateway.auth.secretName=Not_A_Name"], "secretName"),
    ],
    ids=["typo", "service-type", "tiny-body", "bad-secret"],
)
def test_schema_rejects_bad_gateway_values_naming_the_key(
    helm: Helm, values: list[str], named: str
) -> None:
    result = helm.render(*values, check=False)
    assert result.returncode != 0, f"{values} was accepted"
    assert named in result.stderr, result.stderr


def test_helm_lint_strict_passes_with_auth_and_namespaces(helm: Helm) -> None:
    result = helm.run(
        "lint", "--strict", str(CHART),
        "--set", "gateway.auth.secretName=t", "--set", "watchNamespaces={a,b}",
    )  # fmt: skip
    assert "0 chart(s) failed" in result.stdout
