"""The autoscaler loop's reading of the load, against a real tti-server process: the mean
requests in flight over an interval, and a pod that does not answer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import httpx
import pytest
from support.server import StartServer, free_port

from tti_kube.client import KubeClient
from tti_operator.autoscale_loop import Autoscaler
from tti_operator.builders import MANAGED_BY, MODEL_LABEL
from tti_operator.informer import ChildCache
from tti_operator.kinds import POD
from tti_operator.reconciler import ModelStore
from tti_operator.settings import OperatorSettings

KEY = ("ml", "m")
LATENCY_S = 0.3


def pod(name: str, ip: str, ready: bool = True) -> dict[str, Any]:
    labels = {"app.kubernetes.io/managed-by": MANAGED_BY, MODEL_LABEL: KEY[1]}
    meta = {"name": name, "namespace": KEY[0], "uid": name, "labels": labels}
    status = {"podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]}
    return {"metadata": meta, "status": status}


def post(url: str) -> None:
    answer = httpx.post(url + "/api/v1/task/text-to-image", json={"inputs": "x"}, timeout=30)
    answer.raise_for_status()


def test_load_is_the_mean_in_flight_and_a_silent_pod_makes_it_incomplete(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    server = start_server("--stub-latency-ms", str(int(LATENCY_S * 1000)), "--max-batch-size", "1")
    silent = f"http://127.0.0.1:{free_port()}/metrics"  # nothing listens there
    urls = {"10.0.0.1": server.url + "/metrics", "10.0.0.2": silent, "10.0.0.3": silent}
    cache = ChildCache(lambda key: None)
    scaler = Autoscaler(
        OperatorSettings(),
        cast(KubeClient, None),  # reading the load writes nothing
        ModelStore(),
        cache,
        lambda *event: None,
        lambda key: None,
        lambda p: urls[p.ip],
    )

    async def scenario() -> None:
        cache.observe(POD, None, pod("a", "10.0.0.1"))
        cache.observe(POD, None, pod("starting", "10.0.0.3", ready=False))  # not scraped
        assert await scaler.servers_load(KEY) == (0.0, True)  # first look: the instant count
        # Two requests at once on one worker: never more than two in flight, and some.
        await asyncio.gather(*(asyncio.to_thread(post, server.url) for _ in range(2)))
        mean, complete = await scaler.servers_load(KEY)
        assert 0 < mean <= 2 and complete
        assert await scaler.servers_load(KEY) == (0.0, True)  # idle since

        cache.observe(POD, None, pod("b", "10.0.0.2"))
        with caplog.at_level(logging.WARNING, "tti_operator.autoscale_loop"):
            assert await scaler.servers_load(KEY) == (0.0, False)
            assert await scaler.servers_load(KEY) == (0.0, False)
        warned = [r.getMessage() for r in caplog.records if silent in r.getMessage()]
        assert len(warned) == 1, warned  # logged once, not every tick
        await scaler.close()

    asyncio.run(scenario())
