"""The autoscaler's loop: its reading of the load against a real tti-server process (the
mean requests in flight over an interval, a pod that does not answer), and what it
remembers of each model, ticked by hand in a running controller against the in-memory API.
The policy's decisions themselves are tables in test_operator_autoscale_policy.py."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Mapping
from typing import Any, cast

import httpx
import pytest
from memory_cluster import Harness, body
from support.server import StartServer, free_port

from tti_kube.client import ApiError, KubeClient
from tti_operator import reconciler
from tti_operator.autoscale_loop import STATUS_REFRESH_S, AutoscaleLoop, ModelScaling, Written
from tti_operator.builders import MODEL_LABEL
from tti_operator.informer import ChildCache
from tti_operator.kinds import POD
from tti_operator.ownership import MANAGED_BY
from tti_operator.reconciler import ModelStore, Shared
from tti_operator.settings import OperatorSettings
from tti_operator.spec import ModelSpec

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
    # Reading the load writes nothing: no client.
    no_events = lambda *event: None  # noqa: E731
    shared = Shared(OperatorSettings(), cast(KubeClient, None), ModelStore(), cache, no_events)
    scaler = AutoscaleLoop(shared, lambda key: None, lambda p: urls[p.ip])

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


# What the loop remembers of a model, with the policy's decisions taken as given.

AUTOSCALED = {"model": "stub", "replicas": 1, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


def published(h: Harness) -> dict[str, Any] | None:
    """The model's `status.autoscaling` as last patched (None: not there)."""
    return cast(dict[str, Any] | None, h.api.statuses[-1].get("autoscaling"))


def test_a_decision_is_written_announced_and_published_by_the_reconciler(h: Harness) -> None:
    h.model(body(AUTOSCALED))
    h.tick()  # idle, but below minReplicas
    assert h.api.scales == [("m", 2)]
    assert ("Normal", "ScaledUp") in h.events
    status = published(h)
    assert status is not None and status["desiredReplicas"] == 2 and "lastScaleTime" in status


def test_a_model_no_longer_autoscaled_is_forgotten_and_its_status_says_so(h: Harness) -> None:
    h.model(body(AUTOSCALED))
    h.tick()
    h.model(body({"model": "stub", "replicas": 2}, generation=2), "MODIFIED")
    h.tick()
    assert h.controller.autoscaler.models == {}
    assert published(h) is None


def test_a_namesake_starts_afresh(h: Harness) -> None:
    h.model(body(AUTOSCALED, uid="first"))
    h.tick()
    h.model(body(AUTOSCALED, uid="first"), "DELETED")
    h.model(body(AUTOSCALED, uid="second"))
    h.tick()  # a first look again: the first one's history does not hold it back
    assert h.controller.autoscaler.models[("ns", "m")].uid == "second"
    assert h.api.scales == [("m", 2), ("m", 2)]


def test_a_scale_the_api_server_refuses_is_decided_again_at_the_next_tick(h: Harness) -> None:
    h.model(body(AUTOSCALED))
    h.api.refuse_scale = ApiError(503, "API server unreachable")
    h.tick()
    assert h.api.scales == [] and h.events == [("Normal", "Created")]
    h.api.refuse_scale = None
    h.tick()  # within the interval, yet decided: the refused decision never happened
    assert h.api.scales == [("m", 2)]


def test_the_spec_is_parsed_once_per_generation_for_reconciler_and_autoscaler(
    h: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    parsed: list[Mapping[str, Any]] = []
    parse = reconciler.parse_spec

    def counted(spec: Mapping[str, Any]) -> ModelSpec:
        parsed.append(spec)
        return parse(spec)

    monkeypatch.setattr(reconciler, "parse_spec", counted)
    h.model(body(AUTOSCALED))
    for _ in range(3):
        h.tick()
        h.enqueue()
    assert len(parsed) == 1
    h.model(body({**AUTOSCALED, "imageFormat": "webp"}, generation=2), "MODIFIED")
    h.tick()
    assert len(parsed) == 2


def test_its_own_write_counts_until_the_watch_shows_it_and_no_longer() -> None:
    scaling = ModelScaling("u", written=Written(before=1, after=2, at=100.0))
    assert scaling.replicas(1, now=110.0) == 2  # the watch still shows the count it replaced
    assert scaling.replicas(2, now=111.0) == 2 and scaling.written is None  # shown
    scaling.written = Written(before=1, after=2, at=100.0)
    assert scaling.replicas(3, now=110.0) == 3  # someone else's scale wins
    scaling.written = Written(before=1, after=2, at=100.0)
    assert scaling.replicas(1, now=131.0) == 1  # never shown in 30 s: the watch is right


def test_a_new_decision_is_published_at_once_a_moving_load_at_most_every_refresh() -> None:
    scaling = ModelScaling("u")
    decided = {"desiredReplicas": 2, "load": 3.0, "reason": "load 3"}
    assert scaling.publish(decided, now=0.0)
    assert not scaling.publish(decided, now=1.0)  # nothing new
    moved = {**decided, "load": 3.5, "reason": "load 3.5"}
    assert not scaling.publish(moved, now=1.0)  # only the load moved, and lately published
    assert scaling.publish(moved, now=STATUS_REFRESH_S)
    assert scaling.publish({**moved, "desiredReplicas": 3}, now=STATUS_REFRESH_S + 1)
    assert scaling.status == {**moved, "desiredReplicas": 3}
