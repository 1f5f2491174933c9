"""The load the autoscaler reads, against a real `tti-server` process: the integral of the
requests in flight or queued (HTTP and gRPC alike), whose rate is the mean concurrency."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from support.grpc_client import metric, predict, vision_stub
from support.server import ServerProcess, StartServer

LOAD = "tti_request_load_seconds_total"
CAIKIT = "/api/v1/task/text-to-image"
#: Each request holds the one worker this long (max batch 1: requests queue one behind another).
LATENCY_S = 0.5


def timed(call: Callable[[], object]) -> float:
    """Run `call()`; return the seconds it took as the client saw them."""
    start = time.monotonic()
    call()
    return time.monotonic() - start


def http_request(server: ServerProcess) -> None:
    answer = httpx.post(server.url + CAIKIT, json={"inputs": "load"}, timeout=30)
    assert answer.status_code == 200, answer.text


def test_load_counts_http_and_grpc_requests_queued_and_running(
    start_server: StartServer,
) -> None:
    server = start_server("--stub-latency-ms", str(int(LATENCY_S * 1000)), "--max-batch-size", "1")
    idle = metric(server.url, LOAD)
    assert metric(server.url, LOAD) == idle  # nothing in flight, nothing counted
    assert metric(server.url, "tti_in_flight") == 0

    # One HTTP then one gRPC request: each spends at least LATENCY_S in the engine, and
    # no more than its client waited. Without gRPC counted the sum would be one request's.
    with vision_stub(server.grpc_target) as stub:
        waited = timed(lambda: http_request(server)) + timed(lambda: predict(stub))
    after_two = metric(server.url, LOAD)
    assert 2 * LATENCY_S <= after_two - idle <= waited

    # Two at once on one worker: the second queues behind the first, and queued time
    # counts too (one running + one queued, then one running: 3 x LATENCY_S at least).
    with ThreadPoolExecutor(2) as pool:
        waited = sum(pool.map(lambda _: timed(lambda: http_request(server)), range(2)))
    after_pair = metric(server.url, LOAD)
    assert 3 * LATENCY_S <= after_pair - after_two <= waited
    assert metric(server.url, LOAD) == after_pair  # idle again: the integral stands still
