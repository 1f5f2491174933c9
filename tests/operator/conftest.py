"""Fixtures for the operator's cluster tests: the CRD, a CPU node, the operator process.

The session's operator serves only namespaces of its own, never all of them: an
all-namespaces operator left running would fight any other operator in the same session
(the chart's tests run one) over the same models. Its namespaces are named up front, one
per test that asks for `operator_namespace`, since the operator takes names, not patterns;
each test's namespace is created when the test starts and deleted when it ends.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_harness import CPU_NODE, CRD, OperatorProcess, cpu_node
from support.cluster import Cluster

from localcluster import launcher


@pytest.fixture(scope="session")
def crd(cluster: Cluster) -> Path:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/texttoimagemodels.tti.dev", "--timeout=60s"
    )
    return CRD


@pytest.fixture(scope="session")
def cpu_nodes(cluster: Cluster) -> Iterator[str]:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(cpu_node()))
    cluster.kubectl("wait", "--for=condition=Ready", f"node/{CPU_NODE}", "--timeout=60s")
    yield CPU_NODE
    cluster.kubectl("delete", "node", CPU_NODE, "--wait=false", check=False)


@pytest.fixture(scope="session")
def operator_namespaces(request: pytest.FixtureRequest) -> list[str]:
    """One name per collected test that uses `operator_namespace`; unique to this session."""
    users = sum(
        "operator_namespace" in getattr(item, "fixturenames", ()) for item in request.session.items
    )
    session = uuid.uuid4().hex[:6]
    # At least one: an empty list would mean all namespaces to the operator.
    return [f"op-{session}-{index}" for index in range(max(users, 1))]


@pytest.fixture(scope="session")
def _unused_namespaces(operator_namespaces: list[str]) -> Iterator[str]:
    return iter(operator_namespaces)


@pytest.fixture
def operator_namespace(cluster: Cluster, _unused_namespaces: Iterator[str]) -> Iterator[str]:
    """A fresh namespace the session's operator serves, deleted after the test."""
    name = next(_unused_namespaces, None)
    if name is None:
        pytest.fail("more tests asked for operator_namespace than were collected")
    manifest = launcher.namespace(name, simulated=True)
    cluster.kubectl("create", "-f", "-", input=json.dumps(manifest))
    cluster.kubectl("wait", "--for=create", "serviceaccount/default", "-n", name, "--timeout=60s")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster,
    crd: Path,
    cpu_nodes: str,
    operator_namespaces: list[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(
        cluster,
        tmp_path_factory.mktemp("operator") / "operator.log",
        extra_env={
            "TTI_OPERATOR_NAMESPACES": ",".join(operator_namespaces),
            # No container runs on the kwok nodes, so a fetch Job never ends there: the
            # model cache is on only for the models that ask (spec.cache.enabled).
            "TTI_OPERATOR_CACHE_ENABLED": "false",
        },
    )
    process.start()
    yield process
    process.stop()
