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
        "NetworkPolicy",
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


#: The rows of docs/gateway.md's RBAC table that only `gateway.identity` needs.
REVIEW_GROUPS = {"authentication.k8s.io", "authorization.k8s.io"}
REVIEWS = f"{NAME}-reviews"
MODEL_USER = "tti-tti-operator-model-user"


def gateway_roles(objects: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """The gateway's own roles by name (not the model-user role, which is for callers)."""
    roles: dict[str, list[dict[str, Any]]] = {}
    for role in objects_of(gateway_part(objects), "ClusterRole") + objects_of(
        gateway_part(objects), "Role"
    ):
        if role["metadata"]["name"] != MODEL_USER:
            roles.setdefault(role["metadata"]["name"], []).append(role)
    return roles


def test_gateway_rbac_is_exactly_what_the_gateway_docs_list(helm: Helm) -> None:
    """docs/gateway.md lists the calls the gateway makes (its cluster tests run it under the
    chart's roles and nothing else); no Secrets, no Pods, nothing it does not call. The
    reviews are granted only with identity on."""
    documented = documented_rbac()
    assert ("tti.dev", "texttoimagemodels/scale", "patch") in documented  # the table was parsed
    reviews = {row for row in documented if row[0] in REVIEW_GROUPS}
    assert reviews == {
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    }
    for extra in ((), ("watchNamespaces={team-a}",)):
        roles = gateway_roles(helm.template(*extra))
        assert list(roles) == [NAME]
        for role in roles[NAME]:
            assert granted(role["rules"]) == documented - reviews, role["kind"]
        roles = gateway_roles(helm.template("gateway.identity.enabled=true", *extra))
        assert sorted(roles) == [NAME, REVIEWS]
        [review_role] = roles[REVIEWS]
        assert review_role["kind"] == "ClusterRole"  # cluster-scoped reviews: in every mode
        assert granted(review_role["rules"]) == reviews


def test_identity_binds_the_reviews_to_the_gateway_and_passes_its_settings(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    objects = helm.template(
        "watchNamespaces={team-a}",
        "gateway.identity.enabled=true",
        "gateway.identity.audience=painters",
        "gateway.identity.denyCacheSeconds=1",
    )
    cluster_wide = [o for o in gateway_part(objects) if o["kind"].startswith("Cluster")]
    assert sorted((o["kind"], o["metadata"]["name"]) for o in cluster_wide) == [
        ("ClusterRole", REVIEWS),
        ("ClusterRole", MODEL_USER),
        ("ClusterRoleBinding", REVIEWS),
    ]
    binding = one(cluster_wide, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == REVIEWS
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": NAME, "namespace": "tti-system"}
    ]
    for name, value in env_of(gateway_container(objects)).items():
        monkeypatch.setenv(name, value)
    settings = GatewaySettings()
    assert settings.identity and settings.identity_audience == "painters"
    assert (settings.identity_allow_ttl, settings.identity_deny_ttl) == (10, 1)
    assert settings.identity_cache_size == 10000
    assert settings.auth_tokens_file is None


def test_identity_is_off_by_default_and_renders_nothing_cluster_wide_for_it(
    helm: Helm,
) -> None:
    objects = helm.template()
    names = {o["metadata"]["name"] for o in objects}
    assert REVIEWS not in names and MODEL_USER not in names
    assert not {n for n in env_of(gateway_container(objects)) if "IDENTITY" in n}


def test_the_model_user_role_grants_generate_only_and_aggregates_into_edit_and_admin(
    helm: Helm,
) -> None:
    role = next(
        o
        for o in objects_of(helm.template("gateway.identity.enabled=true"), "ClusterRole")
        if o["metadata"]["name"] == MODEL_USER
    )
    assert granted(role["rules"]) == {("tti.dev", "texttoimagemodels", "generate")}
    labels = role["metadata"]["labels"]
    assert labels["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in labels  # view costs no GPU
    alone = next(
        o
        for o in objects_of(
            helm.template(
                "gateway.identity.enabled=true", "gateway.identity.aggregateToEditAndAdmin=false"
            ),
            "ClusterRole",
        )
        if o["metadata"]["name"] == MODEL_USER
    )
    assert not [k for k in alone["metadata"]["labels"] if k.startswith("rbac.authorization")]


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
        "gateway.streamIdleTimeoutSeconds=45",
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
    assert settings.stream_idle_timeout == 45
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


def test_notes_show_a_client_pods_projected_token_and_the_rolebinding_with_identity(
    helm: Helm,
) -> None:
    text = notes(helm, "gateway.identity.enabled=true", "gateway.identity.audience=painters")
    assert "serviceAccountToken: {audience: painters, expirationSeconds: 3600, path: token}" in text
    assert f"--clusterrole={MODEL_USER} --serviceaccount=tti-system:painter" in text
    assert 'api_key=open("/var/run/secrets/tti/token").read()' in text
    assert "no authentication" not in text
    for values in ((), ("gateway.identity.enabled=true",), ("gateway.enabled=false",)):
        assert "docs/security.md" in notes(helm, *values)


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
        (["gateway.identity.audince=x"], "audince"),
        (["gateway.identity.cacheSize=0"], "cacheSize"),
        (["gateway.identity.audience=a b"], "audience"),
    ],
    ids=["typo", "service-type", "tiny-body", "bad-secret", "identity-typo", "cache", "aud"],
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
        "--set", "gateway.identity.enabled=true",
    )  # fmt: skip
    assert "0 chart(s) failed" in result.stdout
