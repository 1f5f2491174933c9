"""NetworkPolicies enforced on the real node: who may open a connection to a model's pods.

The chart runs the operator and the gateway in pods; the operator gives each model a
NetworkPolicy, and kube-router's policy controller, running beside the kubelet, turns it
into iptables rules and ipsets on the node. Every verdict comes from a real pod opening a
real TCP connection to the model's Service (and to its pod directly), from the namespace
the test puts it in. Enforcement follows a change within moments, not at once, so each
probe tries until the connections do what is expected, then says what they did.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image
from support.cluster import Cluster, fresh_namespace
from support.helm import CHART
from support.realpods import (
    Release,
    gateway_url,
    install,
    pod_finished,
    run_client,
    start_python_pod,
    wait_for,
    wait_ready,
)

from tti_server.backends.stub import STUB_COLOR

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

TOKEN = f"np-{uuid.uuid4().hex}"
#: The label a namespace carries to be let in by the model that names it in spec.access.
CALLER_LABEL = "tti-test/caller"

#: Opens a TCP connection to each HOST:PORT until each opens or is refused as expected
#: (argv[1], JSON) or argv[2] seconds passed; prints what each did last, as JSON.
PROBE = """
import json, socket, sys, time
expected = json.loads(sys.argv[1])
deadline = time.monotonic() + float(sys.argv[2])
def opens(target):
    host, port = target.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
        return True
    except OSError:
        return False
while True:
    seen = {target: opens(target) for target in expected}
    if seen == expected or time.monotonic() > deadline:
        break
    time.sleep(1)
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def release(cluster: Cluster) -> Iterator[Release]:
    with install(cluster, "np", tokens=TOKEN) as release:
        yield release


@pytest.fixture(scope="module")
def outsider(cluster: Cluster) -> Iterator[str]:
    """A namespace no model lets in."""
    yield from fresh_namespace(cluster, "np-outsider", simulated=False)


@pytest.fixture(scope="module")
def caller(cluster: Cluster) -> Iterator[tuple[str, str]]:
    """A namespace labelled for a model's spec.access: (its name, its label's value)."""
    value = uuid.uuid4().hex[:12]
    for name in fresh_namespace(cluster, "np-caller", simulated=False):
        cluster.kubectl("label", "namespace", name, f"{CALLER_LABEL}={value}")
        yield name, value


def probe(release: Release, namespace: str, expected: dict[str, bool]) -> dict[str, bool]:
    """What connections from a fresh pod in `namespace` did (opened: True)."""
    pod = start_python_pod(release, "probe", PROBE, json.dumps(expected), "90", namespace=namespace)
    seen: dict[str, bool] = json.loads(pod_finished(release, pod, namespace=namespace))
    return seen


def targets(release: Release, model: str, opened: bool) -> dict[str, bool]:
    """The model's Service on both APIs, and its pod's HTTP port, all expected `opened`."""
    [pod] = release.pods(model)
    service = f"{model}.{release.models}.svc"
    return {
        f"{service}:8080": opened,
        f"{service}:8085": opened,
        f"{pod['status']['podIP']}:8080": opened,
    }


def test_the_operator_gives_each_model_a_policy_it_owns(release: Release) -> None:
    release.apply_model("owned")
    wait_ready(release, "owned")
    policy = release.get("networkpolicy", "owned", "-n", release.models)
    [owner] = policy["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("TextToImageModel", "owned")
    assert owner["controller"] is True
    assert policy["spec"]["podSelector"]["matchLabels"]["tti.dev/model"] == "owned"


def test_another_namespace_cannot_connect_to_the_model_but_through_the_gateway_it_can(
    release: Release, outsider: str, tmp_path: Path
) -> None:
    release.apply_model("guarded")
    wait_ready(release, "guarded")
    expected = targets(release, "guarded", opened=False)
    assert probe(release, outsider, expected) == expected

    image = run_client(
        release,
        gateway_url(release),
        f"{release.models}/guarded",
        tmp_path,
        api_key=TOKEN,
        namespace=outsider,
    )
    with Image.open(image) as png:
        assert png.convert("RGB").getpixel((5, 5)) == STUB_COLOR


def test_the_models_own_namespace_reaches_it_by_default(release: Release) -> None:
    release.apply_model("neighbour")
    wait_ready(release, "neighbour")
    expected = targets(release, "neighbour", opened=True)
    assert probe(release, release.models, expected) == expected


def test_a_namespace_spec_access_names_reaches_the_model_and_no_other_does(
    release: Release, outsider: str, caller: tuple[str, str]
) -> None:
    namespace, value = caller
    access = {"from": [{"namespaceSelector": {"matchLabels": {CALLER_LABEL: value}}}]}
    release.apply_model("opened", access=access)
    wait_ready(release, "opened")
    allowed = targets(release, "opened", opened=True)
    assert probe(release, namespace, allowed) == allowed
    refused = targets(release, "opened", opened=False)
    assert probe(release, outsider, refused) == refused
    # spec.access replaces the default: the model's own namespace is no longer named.
    assert probe(release, release.models, refused) == refused

    release.apply_model("opened", access={"from": []})  # nobody but the platform now
    assert probe(release, namespace, refused) == refused


def test_policies_turned_off_the_operator_deletes_the_models_and_everyone_gets_in(
    release: Release, outsider: str
) -> None:
    """The control: what refused the outsider was the policies, and the switch removes the
    models' ones too (the operator prunes what it made)."""
    release.apply_model("unguarded")
    wait_ready(release, "unguarded")
    release.cluster.helm(
        "upgrade", release.name, str(CHART),
        "-n", release.namespace, "--reuse-values", "--set", "networkPolicies.enabled=false",
        "--wait", "--timeout", "4m",
    )  # fmt: skip

    def no_policies() -> bool:
        found = release.get("networkpolicies", "-n", release.models)["items"]
        return not found and not release.get("networkpolicies", "-n", release.namespace)["items"]

    wait_for("every policy deleted", no_policies)
    expected = targets(release, "unguarded", opened=True)
    assert probe(release, outsider, expected) == expected
