"""The chart, rendered and linted by the real helm (no cluster needed).

Default values give a cluster-wide operator; `watchNamespaces` gives Roles only;
`models` creates TextToImageModel resources and a `helm test` hook; the strict
values schema turns a typo into an error that names the key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from support.helm import CHART, Helm, objects_of, one

from tti_operator.builders import Owner, pod_template
from tti_operator.kinds import CACHE_KINDS, CHILD_KINDS
from tti_operator.settings import OperatorSettings
from tti_operator.spec import parse_spec

ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


def operator_part(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The release's objects less the gateway's (tests/chart/test_chart_gateway.py)."""
    return [o for o in objects if not is_gateway(o)]


def is_gateway(obj: dict[str, Any]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return bool(labels.get("app.kubernetes.io/component") == "gateway")


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    pod = one(operator_part(objects), "Deployment")["spec"]["template"]["spec"]
    containers: list[dict[str, Any]] = pod["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def kinds(objects: list[dict[str, Any]]) -> list[str]:
    return sorted(o["kind"] for o in objects)


def test_chart_crd_is_the_same_file_as_crds_folder() -> None:
    """Helm installs the chart's copy; drift from crds/ would ship a stale schema."""
    source = sorted(p.name for p in (ROOT / "crds").glob("*.yaml") if "sample" not in p.name)
    shipped = sorted(p.name for p in (CHART / "crds").glob("*.yaml"))
    assert source, "crds/ holds no CustomResourceDefinition yet"
    assert shipped == source
    for name in source:
        assert (CHART / "crds" / name).read_bytes() == (ROOT / "crds" / name).read_bytes(), (
            f"charts/tti-operator/crds/{name} differs from crds/{name}: copy it over"
        )


@pytest.mark.parametrize(
    "values",
    [
        [],
        ["watchNamespaces={team-a,team-b}"],
        ["models[0].name=stub", "models[0].spec.model=stub", "models[0].spec.gpus=0"],
    ],
    ids=["defaults", "namespaced", "with-model"],
)
def test_helm_lint_strict_passes(helm: Helm, values: list[str]) -> None:
    args = ["lint", "--strict", str(CHART)]
    for value in values:
        args += ["--set", value]
    result = helm.run(*args)
    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_defaults_install_a_cluster_wide_operator(helm: Helm) -> None:
    objects = operator_part(helm.template())
    assert kinds(objects) == [
        "ClusterRole",
        "ClusterRoleBinding",
        "Deployment",
        "NetworkPolicy",
        "ServiceAccount",
    ]
    binding = one(objects, "ClusterRoleBinding")
    account = one(objects, "ServiceAccount")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["metadata"]["name"], "namespace": "tti-system"}
    ]
    assert binding["roleRef"]["name"] == one(objects, "ClusterRole")["metadata"]["name"]
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED:
            assert obj["metadata"]["namespace"] == "tti-system"


def test_operator_deployment_is_single_recreate_probed_and_hardened(helm: Helm) -> None:
    objects = operator_part(helm.template())
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == one(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    container = operator_container(objects)
    assert container["image"] == "tti-operator:0.1.0"
    hardened = {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert hardened.items() <= container["securityContext"].items()
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "liveness"}
    assert ports["liveness"] == 8081
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_the_fetch_jobs_resources_reach_the_operators_settings(helm: Helm) -> None:
    """A JSON value in the environment, as the operator's settings parse it."""
    env = env_of(operator_container(helm.template("modelCache.fetchResources.limits.memory=4Gi")))
    resources = json.loads(env["TTI_OPERATOR_CACHE_FETCH_RESOURCES"])
    assert resources == {
        "requests": {"cpu": "250m", "memory": "512Mi"},
        "limits": {"memory": "4Gi"},
    }
    settings = OperatorSettings(_env_file=None, cache_fetch_resources=resources)
    assert settings.cache_fetch_resources["limits"]["memory"] == "4Gi"


def test_operator_is_told_the_server_image_and_namespaces(helm: Helm) -> None:
    env = env_of(operator_container(helm.template()))
    assert env["TTI_OPERATOR_SERVER_IMAGE"] == "tti-server:0.1.0"
    assert env["TTI_OPERATOR_NAMESPACES"] == ""
    env = env_of(
        operator_container(
            helm.template(
                "serverImage.repository=registry.example/tti-server",
                f"serverImage.digest=sha256:{'a' * 64}",
                "operator.image.tag=1.2.3",
                "watchNamespaces={team-a,team-b}",
            )
        )
    )
    assert env["TTI_OPERATOR_SERVER_IMAGE"] == f"registry.example/tti-server@sha256:{'a' * 64}"
    assert env["TTI_OPERATOR_NAMESPACES"] == "team-a,team-b"


def test_playground_value_reaches_the_operator(helm: Helm) -> None:
    assert env_of(operator_container(helm.template()))["TTI_OPERATOR_PLAYGROUND"] == "true"
    env = env_of(operator_container(helm.template("playground=false")))
    assert env["TTI_OPERATOR_PLAYGROUND"] == "false"


def test_namespaced_install_has_roles_in_each_namespace_and_nothing_cluster_wide(
    helm: Helm,
) -> None:
    objects = helm.template("watchNamespaces={team-a,team-b}")
    assert not [o for o in objects if o["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    objects = operator_part(objects)
    roles = objects_of(objects, "Role")
    bindings = objects_of(objects, "RoleBinding")
    assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == ["team-a", "team-b"]
    account = one(objects, "ServiceAccount")["metadata"]
    for binding in bindings:
        assert binding["roleRef"]["kind"] == "Role"
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account["name"], "namespace": "tti-system"}
        ]


def granted(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples a list of RBAC rules allows."""
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


#: The only deletes: a model's NetworkPolicy once policies are turned off, the model
#: cache's own fetch Jobs (once read) and expired claims.
ALLOWED_DELETES = {
    ("networking.k8s.io", "networkpolicies", "delete"),
    ("", "persistentvolumeclaims", "delete"),
    ("batch", "jobs", "delete"),
}


def test_rbac_grants_no_wildcards_no_secrets_and_deletes_only_what_it_prunes(helm: Helm) -> None:
    for objects in (helm.template(), helm.template("watchNamespaces={team-a}")):
        for role in objects_of(objects, "ClusterRole") + objects_of(objects, "Role"):
            triples = granted(role["rules"])
            assert not [t for t in triples if "*" in t], "wildcards are not least privilege"
            assert not [t for t in triples if t[1] == "secrets"]
            # The operator writes each model's adapters manifest (a ConfigMap of its own,
            # by server-side apply); nothing reads another ConfigMap by name or deletes one.
            configmaps = {t[2] for t in triples if t[1] == "configmaps"}
            assert configmaps <= {"list", "watch", "create", "patch"}, role["kind"]
            deletes = {t for t in triples if t[2] in {"delete", "deletecollection", "escalate"}}
            assert deletes <= ALLOWED_DELETES


def test_rbac_lets_the_autoscaler_patch_the_scale_subresource_only(helm: Helm) -> None:
    for objects in (helm.template(), helm.template("watchNamespaces={team-a}")):
        for role in objects_of(objects, "ClusterRole") + objects_of(objects, "Role"):
            scale = {v for g, r, v in granted(role["rules"]) if r == "texttoimagemodels/scale"}
            assert scale == {"patch"}, role["kind"]


def test_models_are_created_with_the_release(helm: Helm) -> None:
    values = {
        "models": [
            {"name": "stub", "spec": {"model": "stub", "gpus": 0}},
            {"name": "turbo", "namespace": "team-a", "spec": {"model": "sdxl-turbo", "gpus": 1}},
        ]
    }
    models = objects_of(helm.template(values=values), "TextToImageModel")
    assert [(m["metadata"]["name"], m["metadata"]["namespace"]) for m in models] == [
        ("stub", "tti-system"),
        ("turbo", "team-a"),
    ]
    assert models[1]["apiVersion"] == "tti.dev/v1alpha1"
    assert models[1]["spec"] == {"model": "sdxl-turbo", "gpus": 1}


def test_helm_test_hook_calls_the_models_service(helm: Helm) -> None:
    assert not objects_of(helm.template(), "Pod"), "no model, nothing for `helm test` to call"
    values = {"models": [{"name": "turbo-a", "spec": {"model": "stub"}}]}
    pod = one(helm.template(values=values), "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    assert pod["spec"]["automountServiceAccountToken"] is False
    http, grpc, gateway = pod["spec"]["containers"]
    assert [c["name"] for c in (http, grpc, gateway)] == [
        "generate-http",
        "generate-grpc",
        "generate-gateway",
    ]
    for container in (http, grpc, gateway):
        assert container["image"] == "tti-server:0.1.0"
        assert container["command"] == ["tti"]
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # By the name the operator has the pod serve: the served name is checked end to end.
    model_ids = [c["args"][c["args"].index("--model-id") + 1] for c in (http, grpc, gateway)]
    assert model_ids == ["turbo-a", "turbo-a", "tti-system/turbo-a"]
    assert http["args"][http["args"].index("--url") + 1] == "http://turbo-a.tti-system.svc:8080"
    assert grpc["args"][grpc["args"].index("--grpc") + 1] == "turbo-a.tti-system.svc:8085"
    gateway_url = "http://tti-tti-operator-gateway.tti-system.svc:80"
    assert gateway["args"][gateway["args"].index("--url") + 1] == gateway_url
    # Without the gateway, or with its auth on (the test holds no token): the model alone.
    for switch in (
        "gateway.enabled=false",
        "gateway.auth.secretName=t",
        "gateway.identity.enabled=true",
    ):
        pod = one(helm.template(switch, values=values), "Pod")
        assert [c["name"] for c in pod["spec"]["containers"]] == ["generate-http", "generate-grpc"]


def test_names_fit_in_63_characters(helm: Helm) -> None:
    release = ("a-very-long-release-name-" * 3)[:53]  # helm's own limit on release names
    objects = helm.template(
        values={"models": [{"name": "m", "spec": {"model": "stub"}}]}, release=release
    )
    for obj in objects:
        name = obj["metadata"]["name"]
        assert len(name) <= 63 and not name.endswith("-"), name
    assert one(operator_part(objects), "Deployment")["metadata"]["name"].startswith(release[:40])


@pytest.mark.parametrize(
    ("values", "named"),
    [
        (["operatr.image.tag=1"], "operatr"),
        (["operator.image.tga=1"], "tga"),
        (["watchNamespaces={Not_A_Namespace}"], "watchNamespaces"),
        (["operator.livenessPort=0"], "livenessPort"),
        (["models[0].name=stub"], "spec"),
        (["models[0].name=stub", "models[0].spec.model=dall-e"], "model"),
        (["serverImage.digest=latest"], "digest"),
    ],
    ids=[
        "typo-top",
        "typo-nested",
        "bad-namespace",
        "bad-port",
        "model-no-spec",
        "bad-model",
        "digest",
    ],
)
def test_schema_rejects_bad_values_naming_the_key(
    helm: Helm, values: list[str], named: str
) -> None:
    result = helm.render(*values, check=False)
    assert result.returncode != 0, f"{values} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert named in result.stderr, result.stderr


def test_every_value_has_a_one_line_comment() -> None:
    """values.yaml is the chart's reference: each key says what it is for.

    Keys nested deeper than operator.image.tag are example data (resources.requests.cpu).
    """
    lines = (CHART / "values.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if not stripped or stripped.startswith(("#", "-")) or indent > 4:
            continue
        key = stripped.split(":", 1)[0]
        previous = lines[index - 1].strip() if index else ""
        is_section = stripped.endswith(":") and index + 1 < len(lines)
        if is_section and not previous.startswith("#"):
            continue  # a section heading (operator:, serviceAccount:) groups commented keys
        assert previous.startswith("#"), f"values.yaml: `{key}` has no comment above it"


def test_values_schema_describes_every_key_of_values_yaml() -> None:
    """Defaults the strict schema did not know would make the chart uninstallable."""
    schema = json.loads((CHART / "values.schema.json").read_text())

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        if "$ref" in node:
            resolved: dict[str, Any] = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
            return resolved
        return node

    def unknown(values: dict[str, Any], node: dict[str, Any], prefix: str) -> list[str]:
        node = resolve(node)
        properties = node.get("properties")
        if properties is None:
            return []  # a free-form map (resources, nodeSelector, annotations)
        missing = []
        for key, value in values.items():
            if key not in properties:
                missing.append(prefix + key)
            elif isinstance(value, dict):
                missing += unknown(value, properties[key], f"{prefix}{key}.")
        return missing

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert schema["additionalProperties"] is False
    assert unknown(values, schema, "") == []


def test_operator_pod_is_hardened_exactly_like_model_pods(helm: Helm) -> None:
    model_pod = pod_template(
        Owner("m", "ns", "uid"), parse_spec({"model": "stub"}), OperatorSettings()
    )
    objects = operator_part(helm.template())
    operator_pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert operator_pod["securityContext"] == model_pod["spec"]["securityContext"]
    model_container = model_pod["spec"]["containers"][0]
    assert operator_container(objects)["securityContext"] == model_container["securityContext"]


def test_operator_env_is_what_its_settings_read(
    helm: Helm, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every variable the chart sets is a real setting, and the values validate."""
    container = operator_container(helm.template("watchNamespaces={team-a,team-b}"))
    env = env_of(container)
    fields = {f"TTI_OPERATOR_{name.upper()}" for name in OperatorSettings.model_fields}
    assert set(env) <= fields, set(env) - fields
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    assert settings.namespaces == ["team-a", "team-b"]
    assert settings.server_image == "tti-server:0.1.0"
    assert settings.liveness_port == container["ports"][0]["containerPort"]
    assert settings.autoscale_interval_s == 2
    assert settings.gateway_url == "http://tti-tti-operator-gateway.tti-system.svc:9090"
    assert settings.network_policies
    assert (settings.own_namespace, settings.gateway_namespace_or_own) == ("tti-system",) * 2
    assert settings.metrics_scrapers == ()


def documented_rbac() -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) from docs/operator.md's RBAC table: what the operator calls."""
    text = (ROOT / "docs" / "operator.md").read_text()
    section = text.split("## RBAC", 1)[1].split("\n## ", 1)[0]
    triples = set()
    for line in section.splitlines():
        cells = [c.strip().strip("`") for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or cells[0] in {"API group", ""} or set(cells[0]) <= {"-"}:
            continue
        group = "" if cells[0] == '""' else cells[0]
        for verb in cells[2].split(","):
            triples.add((group, cells[1], verb.strip().strip("`")))
    return triples


def test_rbac_is_exactly_what_the_operator_docs_list(helm: Helm) -> None:
    """docs/operator.md lists the calls the operator makes (its cluster tests run it under a
    Role with exactly those); the chart grants those and nothing else, in both scopes."""
    documented = documented_rbac()
    assert ("apps", "deployments", "create") in documented  # the table was parsed
    for objects in (helm.template(), helm.template("watchNamespaces={team-a}")):
        objects = operator_part(objects)
        for role in objects_of(objects, "ClusterRole") + objects_of(objects, "Role"):
            assert granted(role["rules"]) == documented, role["kind"]


def test_rbac_grants_each_child_kind_exactly_what_its_row_implies(helm: Helm) -> None:
    """The kinds table drives the watches, the applies and the pruning; the chart must grant
    each kind just that (`list`/`watch`; `create`/`patch` if applied; `delete` if pruned)."""
    for objects in (helm.template(), helm.template("watchNamespaces={team-a}")):
        for role in objects_of(operator_part(objects), "ClusterRole") + objects_of(
            operator_part(objects), "Role"
        ):
            triples = granted(role["rules"])
            for kind in CHILD_KINDS + CACHE_KINDS:
                verbs = {v for g, r, v in triples if (g, r) == (kind.group, kind.plural)}
                assert verbs == kind.verbs, (role["kind"], kind.kind)
