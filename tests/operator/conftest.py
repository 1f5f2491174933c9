"""Fixtures for the operator's cluster tests: the CRD, a CPU node, the operator process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from operator_harness import CPU_NODE, CRD, OperatorProcess, cpu_node
from support.cluster import Cluster


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
def operator(
    cluster: Cluster, crd: Path, cpu_nodes: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(cluster, tmp_path_factory.mktemp("operator") / "operator.log")
    process.start()
    yield process
    process.stop()
