"""The gateway's Kubernetes identities on real pods, from the caller's side.

The chart runs with `gateway.identity.enabled`: its gateway pod reviews each caller's token
(TokenReview) and asks whether that caller may `generate` with the model it names
(SubjectAccessReview against the chart's model-user ClusterRole). The callers are pods of
the models' namespace, each under a ServiceAccount of its own, with the tokens the kubelet
projects as docs/gateway.md tells users to mount them: one for the gateway's audience, and
one for the API server's (the default audience), to show it where it is refused. Each pod
makes its calls in order and prints one JSON line per call: what a compromised pod of the
namespace could see.
"""

from __future__ import annotations

import base64
import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from PIL import Image
from support.cluster import Cluster
from support.realpods import Release, gateway_url, install, pod_finished, wait_ready

from localcluster import demo
from tti_server.backends.stub import STUB_COLOR

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

MODEL = "easel"
AUDIENCE = "tti-gateway"  # the chart's gateway.identity.audience
#: Where the client pods' projected volume is mounted, and the files in it.
TOKENS_DIR = "/var/run/secrets/tti"
GATEWAY_TOKEN = "token"  # for the gateway's audience, as docs/gateway.md mounts it
API_TOKEN = "api-token"  # the same ServiceAccount's, for the API server's own audience
API_SERVER = "https://kubernetes.default.svc"
BOUND, UNBOUND = "painter", "stranger"

#: Makes each call of argv[1] (JSON: url, token file or null, body or null for a GET) in
#: order and prints what it got, one JSON line each. A new pod's first connections can be
#: refused or dropped for a moment (support/realpods.py, ADMISSION): it first waits until
#: each address it calls accepts a connection.
SCRIPT = r"""
import json, socket, ssl, sys, time, urllib.error, urllib.parse, urllib.request

calls = json.loads(sys.argv[1])
tls = ssl.create_default_context(cafile=sys.argv[2] + "/ca.crt")


def admitted(url):
    parts = urllib.parse.urlsplit(url)
    address = (parts.hostname, parts.port or {"http": 80, "https": 443}[parts.scheme])
    deadline = time.monotonic() + 60
    while True:
        try:
            return socket.create_connection(address, timeout=3).close()
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def send(request):
    try:
        return urllib.request.urlopen(request, timeout=240, context=tls)
    except urllib.error.HTTPError as error:
        return error


for url in {call["url"] for call in calls}:
    admitted(url)
for call in calls:
    headers = {"Content-Type": "application/json"}
    if call["token"]:
        with open(sys.argv[2] + "/" + call["token"]) as file:
            headers["Authorization"] = "Bearer " + file.read().strip()
    body = None if call["body"] is None else json.dumps(call["body"]).encode()
    answer = send(urllib.request.Request(call["url"], body, headers))
    text = answer.read()
    try:
        payload = json.loads(text)
    except ValueError:
        payload = text.decode(errors="replace")
    seen = {
        "status": answer.status,
        "authenticate": answer.headers.get("WWW-Authenticate"),
        "payload": payload,
    }
    print(json.dumps(seen), flush=True)
"""


@dataclass(frozen=True)
class Call:
    url: str
    token: str | None  # a file of TOKENS_DIR; None: no Authorization header
    body: dict[str, Any] | None  # None: a GET


@dataclass(frozen=True)
class Seen:
    status: int
    authenticate: str | None
    payload: Any


def model_user_role(release: Release) -> str:
    """The name of the chart's model-user ClusterRole, as the release made it."""
    selector = demo.gateway_selector(release.name)
    roles = release.get("clusterroles", "-l", selector)["items"]
    [name] = [r["metadata"]["name"] for r in roles if r["metadata"]["name"].endswith("-model-user")]
    return str(name)


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    """The chart with identity on, one stub model, and two ServiceAccounts in its namespace:
    one bound to the model-user role as a platform team would bind it, one not."""
    with install(cluster, "gid", "gateway.identity.enabled=true") as release:
        release.apply_model(MODEL)
        for account in (BOUND, UNBOUND):
            release.kubectl("create", "serviceaccount", account, "-n", release.models)
        release.kubectl(
            "create", "rolebinding", f"{BOUND}-may-generate", "-n", release.models,
            f"--clusterrole={model_user_role(release)}",
            f"--serviceaccount={release.models}:{BOUND}",
        )  # fmt: skip
        wait_ready(release, MODEL)
        yield release


def token_volume() -> dict[str, Any]:
    """Both tokens of the pod's ServiceAccount, and the cluster's CA to call the API server."""
    gateway = {"audience": AUDIENCE, "expirationSeconds": 3600, "path": GATEWAY_TOKEN}
    api = {"expirationSeconds": 3600, "path": API_TOKEN}  # no audience: the API server's
    ca = {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}
    sources = [{"serviceAccountToken": gateway}, {"serviceAccountToken": api}, {"configMap": ca}]
    return {"name": "tti-token", "projected": {"sources": sources}}


def calls_from_pod(release: Release, account: str, *calls: Call) -> list[Seen]:
    """Make `calls` in order from one pod of the models' namespace running as `account`
    (its default API token not mounted); what each got."""
    pod = demo.client_pod(release.models, "", "", 8, "")
    name = f"{account}-{uuid.uuid4().hex[:6]}"
    pod["metadata"]["name"] = name
    spec = pod["spec"]
    spec["serviceAccountName"] = account
    spec["volumes"].append(token_volume())
    [container] = spec["containers"]
    mount = {"name": "tti-token", "mountPath": TOKENS_DIR, "readOnly": True}
    container["volumeMounts"].append(mount)
    plan = json.dumps([vars(call) for call in calls])
    container["command"] = ["python3", "-c", SCRIPT, plan, TOKENS_DIR]
    release.kubectl("apply", "-f", "-", input=json.dumps(pod))
    lines = pod_finished(release, name).strip().splitlines()[-len(calls) :]
    return [Seen(**json.loads(line)) for line in lines]


def generate(url: str, token: str | None, model: str) -> Call:
    body = {"model": model, "prompt": "a lighthouse", "size": "64x64"}
    return Call(f"{url}/v1/images/generations", token, body)


def models_listed(url: str, token: str) -> Call:
    return Call(f"{url}/v1/models", token, None)


def who_am_i(token: str) -> Call:
    """The API server's own answer to whom a token belongs (or 401)."""
    body = {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    return Call(f"{API_SERVER}/apis/authentication.k8s.io/v1/selfsubjectreviews", token, body)


def assert_stub_image(seen: Seen) -> None:
    assert seen.status == 200, seen
    [datum] = seen.payload["data"]
    with Image.open(io.BytesIO(base64.b64decode(datum["b64_json"]))) as png:
        assert png.size == (64, 64)
        assert png.convert("RGB").getpixel((5, 5)) == STUB_COLOR


def test_a_service_account_without_the_binding_gets_403_and_sees_no_model(
    release: Release,
) -> None:
    gateway, name = gateway_url(release), f"{release.models}/{MODEL}"
    refused, listed, direct = calls_from_pod(
        release,
        UNBOUND,
        generate(gateway, GATEWAY_TOKEN, name),
        models_listed(gateway, GATEWAY_TOKEN),
        generate(release.service_url(MODEL), None, MODEL),
    )
    assert refused.status == 403, refused
    assert refused.payload["code"] == 403
    assert refused.payload["details"].startswith(
        f"model: this caller may not use {name!r} (it needs RBAC verb generate on "
    ), refused.payload
    assert (listed.status, listed.payload["data"]) == (200, [])
    # The gateway's RBAC check covers calls through the gateway only. The model's own pods
    # let in every pod of its namespace, whatever its ServiceAccount (the default
    # spec.access; docs/security.md: a namespace is the unit of trust).
    assert_stub_image(direct)


def test_a_bound_service_account_gets_an_image_and_only_its_gateway_token_counts(
    release: Release,
) -> None:
    gateway, name = gateway_url(release), f"{release.models}/{MODEL}"
    served, listed, api_audience, no_token, api_knows, replayed, again = calls_from_pod(
        release,
        BOUND,
        generate(gateway, GATEWAY_TOKEN, name),
        models_listed(gateway, GATEWAY_TOKEN),
        generate(gateway, API_TOKEN, name),
        generate(gateway, None, name),
        who_am_i(API_TOKEN),
        who_am_i(GATEWAY_TOKEN),
        generate(gateway, GATEWAY_TOKEN, name),
    )
    assert_stub_image(served)
    assert listed.status == 200, listed
    assert [(m["namespace"], m["id"].rsplit("/", 1)[-1]) for m in listed.payload["data"]] == [
        (release.models, MODEL)
    ]
    # The API server's audience and none at all: the same 401, which never says which.
    for refused in (api_audience, no_token):
        assert (refused.status, refused.authenticate) == (401, "Bearer"), refused
    assert api_audience.payload == {**no_token.payload, "id": api_audience.payload["id"]}
    # The refused token is a good one, where it is meant to be shown: the API server names
    # this ServiceAccount; the gateway's token it refuses, so it cannot be replayed there.
    assert api_knows.status == 201, api_knows
    user = api_knows.payload["status"]["userInfo"]["username"]
    assert user == f"system:serviceaccount:{release.models}:{BOUND}"
    assert replayed.status == 401, replayed
    # The refusals left the gateway serving this caller.
    assert_stub_image(again)
