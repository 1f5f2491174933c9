"""Callers of the gateway against a real API server: ServiceAccount tokens checked with real
TokenReviews, calls authorized with real SubjectAccessReviews against real RBAC, and static
tokens scoped to a namespace, on a real gateway process (cluster source).

The gateway runs under exactly the chart's roles with `gateway.identity.enabled`: its Role
in each watched namespace and its reviews ClusterRole. Callers are ServiceAccounts bound (or
not) to the chart's model-user ClusterRole, their tokens made by the API server
(`kubectl create token`, what a projected volume gets). As in test_gateway_cluster.py, no
operator runs: each model's EndpointSlice points at a real stub server on this host.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
from support.cluster import Cluster, fresh_namespace
from support.gateway import call_as, launch_gateway, write_secret_volume
from support.helm import Helm, ensure_helm
from support.server import ServerProcess, launch_server
from test_gateway_cluster import Namespace, crd_with_autoscaling

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

AUDIENCE = "tti-gateway"
T = TypeVar("T")


def chart_roles() -> dict[str, dict[str, Any]]:
    """The chart's gateway Role, reviews ClusterRole and model-user ClusterRole, as it renders
    them with identity on (one watched namespace)."""
    objects = Helm(ensure_helm()).template("watchNamespaces={x}", "gateway.identity.enabled=true")
    found: dict[str, dict[str, Any]] = {}
    for obj in objects:
        name = obj["metadata"]["name"]
        if obj["kind"] == "Role" and name.endswith("-gateway"):
            found["gateway"] = obj
        elif obj["kind"] == "ClusterRole" and name.endswith("-gateway-reviews"):
            found["reviews"] = obj
        elif obj["kind"] == "ClusterRole" and name.endswith("-model-user"):
            found["model-user"] = obj
    assert sorted(found) == ["gateway", "model-user", "reviews"], sorted(found)
    return found


@dataclass
class World:
    cluster: Cluster
    a: Namespace  # alpha, and sleepy at zero; the callers' home
    b: Namespace  # beta
    model_user: str  # the chart's model-user ClusterRole, under a name of this module's
    kubeconfig: Path  # the gateway's ServiceAccount, under the chart's roles only
    servers: dict[str, ServerProcess]
    log_dir: Path

    def token(self, account: str, audience: str = AUDIENCE, namespace: str = "") -> str:
        args = ["-n", namespace or self.a.name, "create", "token", account, "--duration=10m"]
        if audience:
            args += ["--audience", audience]
        return self.cluster.kubectl(*args).stdout.strip()

    def account(self, name: str, may_generate: bool) -> None:
        self.a.kubectl("create", "serviceaccount", name)
        if may_generate:
            self.grant(name)

    def grant(self, account: str) -> None:
        """What a platform team does: a RoleBinding to the model-user role."""
        self.a.kubectl(
            "create", "rolebinding", f"{account}-may-generate",
            f"--clusterrole={self.model_user}", f"--serviceaccount={self.a.name}:{account}",
        )  # fmt: skip

    def stub(self, model_id: str) -> ServerProcess:
        args = ("--model", "stub", "--model-id", model_id, "--grpc-port", "0", "--host", "0.0.0.0")
        server = launch_server(args, self.log_dir)
        self.servers[model_id] = server
        return server


@pytest.fixture(scope="module")
def world(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    document = json.dumps(crd_with_autoscaling())
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=document)
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/texttoimagemodels.tti.dev", "--timeout=60s"
    )
    first = fresh_namespace(cluster, "gwid", simulated=True)
    second = fresh_namespace(cluster, "gwid", simulated=True)
    a, b = Namespace(cluster, next(first)), Namespace(cluster, next(second))
    suffix = uuid.uuid4().hex[:8]
    roles = chart_roles()
    cluster_objects = [
        ("clusterrole", f"tti-test-{suffix}-reviews"),
        ("clusterrolebinding", f"tti-test-{suffix}-reviews"),
        ("clusterrole", f"tti-test-{suffix}-model-user"),
    ]
    world = World(
        cluster, a, b, f"tti-test-{suffix}-model-user", Path(), {}, tmp_path_factory.mktemp("id")
    )
    try:
        world.kubeconfig = gateway_login(world, roles, suffix)
        model_user = roles["model-user"]
        model_user["metadata"]["name"] = world.model_user
        cluster.kubectl("apply", "-f", "-", input=json.dumps(model_user))
        for ns, model in ((a, "alpha"), (b, "beta")):
            ns.model(model)
            ns.endpoints(model, [world.stub(model)])
        a.model("sleepy", replicas=0, autoscaling=True)
        world.account("painter", may_generate=True)
        world.account("stranger", may_generate=False)
        yield world
    finally:
        for server in world.servers.values():
            server.stop()
        for kind, name in cluster_objects:
            cluster.kubectl("delete", kind, name, "--ignore-not-found")
        for generator in (first, second):
            next(generator, None)


def gateway_login(world: World, roles: dict[str, dict[str, Any]], suffix: str) -> Path:
    """A kubeconfig for the gateway's ServiceAccount, bound to the chart's gateway Role in
    both namespaces and to its reviews ClusterRole: nothing more."""
    home = world.a.name
    world.a.kubectl("create", "serviceaccount", "tti-gateway")
    for ns in (world.a, world.b):
        role = {**roles["gateway"], "metadata": {"name": "tti-gateway"}}
        ns.apply(role)
        ns.kubectl(
            "create", "rolebinding", "tti-gateway", "--role=tti-gateway",
            f"--serviceaccount={home}:tti-gateway",
        )  # fmt: skip
    reviews = roles["reviews"]
    reviews["metadata"] = {"name": f"tti-test-{suffix}-reviews"}
    world.cluster.kubectl("apply", "-f", "-", input=json.dumps(reviews))
    world.cluster.kubectl(
        "create", "clusterrolebinding", f"tti-test-{suffix}-reviews",
        f"--clusterrole=tti-test-{suffix}-reviews", f"--serviceaccount={home}:tti-gateway",
    )  # fmt: skip
    token = world.token("tti-gateway", audience="")  # the API server's own audience
    admin = json.loads(
        world.cluster.kubectl("config", "view", "--raw", "--minify", "-o", "json").stdout
    )
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": admin["clusters"][0]["cluster"]}],
        "users": [{"name": "gw", "user": {"token": token}}],
        "contexts": [{"name": "gw", "context": {"cluster": "c", "user": "gw"}}],
        "current-context": "gw",
    }
    path = world.log_dir / "gateway-kubeconfig"
    path.write_text(json.dumps(config))
    return path


def start(world: World, tokens: Path, *args: str) -> ServerProcess:
    return launch_gateway(
        (
            "--source", "cluster",
            "--namespaces", f"{world.a.name},{world.b.name}",
            "--identity", "true",
            "--auth-tokens-file", str(tokens),
            *args,
        ),
        world.log_dir,
        env={"KUBECONFIG": str(world.kubeconfig)},
    )  # fmt: skip


@pytest.fixture(scope="module")
def gateway(world: World) -> Iterator[ServerProcess]:
    tokens = world.log_dir / "tokens"
    tokens.write_text(f"team-a-token namespaces={world.a.name} name=team-a\n")
    process = start(world, tokens, "--hold-timeout", "120")
    yield process
    process.stop()


def call(gateway: ServerProcess, model: str, token: str | None) -> httpx.Response:
    return call_as(gateway, model, token, timeout=150)  # a model may wake from zero


def listed(gateway: ServerProcess, token: str) -> list[str]:
    answer = httpx.get(gateway.url + "/v1/models", headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 200, answer.text
    return sorted(f"{m['namespace']}/{m['id'].rsplit('/', 1)[-1]}" for m in answer.json()["data"])


def eventually(probe: Callable[[], T], done: Callable[[T], bool], what: str) -> T:
    for _ in range(1200):
        value = probe()
        if done(value):
            return value
        threading.Event().wait(0.05)
    raise AssertionError(f"{what}: still {value!r}")


def test_a_service_account_bound_to_the_model_user_role_calls_its_namespaces_models(
    world: World, gateway: ServerProcess
) -> None:
    token = world.token("painter")
    answer = call(gateway, "alpha", token)
    assert answer.status_code == 200, answer.text
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=token, max_retries=0)
    assert client.images.generate(model="alpha", prompt="a fox", size="64x64").data
    assert listed(gateway, token) == [f"{world.a.name}/alpha", f"{world.a.name}/sleepy"]
    # Another namespace's model: the RoleBinding is in the painter's own namespace only.
    for name in ("beta", f"{world.b.name}/beta"):
        refused = call(gateway, name, token)
        assert refused.status_code == 403, refused.text
        assert refused.json()["details"].startswith("model: this caller may not use")


def test_a_service_account_without_a_binding_gets_403_and_sees_no_model(
    world: World, gateway: ServerProcess
) -> None:
    token = world.token("stranger")
    for name in ("alpha", f"{world.a.name}/alpha", "beta"):
        assert call(gateway, name, token).status_code == 403
    assert listed(gateway, token) == []


def test_tokens_the_api_server_does_not_vouch_for_here_get_the_same_401(
    world: World, gateway: ServerProcess
) -> None:
    good = world.token("painter")
    header, payload, signature = good.split(".")
    world.account("gone", may_generate=True)
    revoked = world.token("gone")
    world.a.kubectl("delete", "serviceaccount", "gone")  # its tokens die with it
    refused = {
        "none": None,
        "garbage": "garbage",
        "a made-up JWT": "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        "a forged signature": f"{header}.{payload}.{signature[::-1]}",
        "another audience": world.token("painter", audience="something-else"),
        "the API server's audience": world.token("painter", audience=""),
        "a deleted ServiceAccount's": revoked,
    }
    answers = {why: call(gateway, "alpha", token) for why, token in refused.items()}
    assert {why: a.status_code for why, a in answers.items()} == dict.fromkeys(refused, 401)
    assert len({a.json()["details"] for a in answers.values()}) == 1  # nothing says why
    assert {a.headers["www-authenticate"] for a in answers.values()} == {"Bearer"}
    assert call(gateway, "alpha", good).status_code == 200


def test_a_static_token_scoped_to_one_namespace_gets_403_in_another(
    world: World, gateway: ServerProcess
) -> None:
    assert call(gateway, "alpha", "team-a-token").status_code == 200
    refused = call(gateway, "beta", "team-a-token")
    assert refused.status_code == 403, refused.text
    assert listed(gateway, "team-a-token") == [f"{world.a.name}/alpha", f"{world.a.name}/sleepy"]


def test_waking_a_model_at_zero_needs_the_permission_to_call_it(
    world: World, gateway: ServerProcess
) -> None:
    refused = call(gateway, "sleepy", world.token("stranger"))
    assert refused.status_code == 403
    assert world.a.replicas("sleepy") == 0  # checked before holding: nothing was woken
    answers: list[httpx.Response] = []
    token = world.token("painter")
    held = threading.Thread(target=lambda: answers.append(call(gateway, "sleepy", token)))
    held.start()
    assert eventually(lambda: world.a.replicas("sleepy"), (1).__eq__, "spec.replicas") == 1
    world.a.endpoints("sleepy", [world.stub("sleepy")])  # the pod the operator would start
    held.join()
    assert answers[0].status_code == 200, answers[0].text


def test_a_new_rolebinding_lets_a_refused_caller_in_without_a_restart(
    world: World, gateway: ServerProcess
) -> None:
    world.account("newcomer", may_generate=False)
    token = world.token("newcomer")
    assert call(gateway, "alpha", token).status_code == 403
    world.grant("newcomer")
    # A refusal is cached for --identity-deny-ttl (2 s), then asked again.
    eventually(lambda: call(gateway, "alpha", token).status_code, (200).__eq__, "granted")


def test_a_rotated_tokens_secret_takes_effect_in_the_running_gateway(
    world: World, tmp_path: Path
) -> None:
    volume = tmp_path / "secret"
    write_secret_volume(volume, {"tokens": f"old-token namespaces={world.a.name}\n"}, 1)
    gateway = start(world, volume / "tokens", "--auth-tokens-poll", "0.2")
    try:
        assert call(gateway, "alpha", "old-token").status_code == 200
        assert call(gateway, "beta", "old-token").status_code == 403
        write_secret_volume(volume, {"tokens": f"new-token namespaces={world.b.name}\n"}, 2)
        eventually(lambda: call(gateway, "beta", "new-token").status_code, (200).__eq__, "new")
        assert call(gateway, "alpha", "old-token").status_code == 401
        assert call(gateway, "alpha", "new-token").status_code == 403
        # Kubernetes identities are unaffected by the file.
        assert call(gateway, "alpha", world.token("painter")).status_code == 200
    finally:
        gateway.stop()
