"""The load the autoscaler reads, against a real `tti-server` process: the integral of the
requests in flight or queued (HTTP and gRPC alike), whose rate is the mean concurrency."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx
from support.clients import metric, wait_for_metric
from support.grpc_client import predict, vision_stub
from support.server import ServerProcess, StartServer

from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE as CAIKIT

LOAD = "tti_request_load_seconds_total"
#: Each request holds the one worker this long (max batch 1: requests queue one behind another).
LATENCY_S = 1.0
#: Spacing between two scrapes, well inside one request's LATENCY_S.
GAP_S = 0.2


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

    # One running, one queued behind it on the one worker: both count. Two scrapes that
    # both see two in flight saw two throughout (nothing else arrives, so the count only
    # falls); between them the integral grew by twice the time the server spent, which is
    # at least the gap between the client's scrapes and at most their span.
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(http_request, server)
        wait_for_metric(server.url, "tti_in_flight", 1)
        second = pool.submit(http_request, server)
        wait_for_metric(server.url, "tti_in_flight", 2)
        (before, after), gap, span = two_scrapes(server)
        first.result(), second.result()
    assert before["tti_in_flight"] == after["tti_in_flight"] == 2
    assert 2 * gap <= after[LOAD] - before[LOAD] <= 2 * span
    idle = metric(server.url, LOAD)
    assert metric(server.url, LOAD) == idle  # idle again: the integral stands still


def scrape(server: ServerProcess) -> dict[str, float]:
    """Every unlabelled sample of one /metrics answer."""
    text = httpx.get(server.url + "/metrics").text
    samples = (line.split() for line in text.splitlines() if not line.startswith("#"))
    return {fields[0]: float(fields[1]) for fields in samples if len(fields) == 2}


def two_scrapes(
    server: ServerProcess,
) -> tuple[tuple[dict[str, float], dict[str, float]], float, float]:
    """Two scrapes a little apart; the client's gap between them (end of the first answer
    to the start of the second request) and their whole span."""
    start = time.monotonic()
    before = scrape(server)
    first_answered = time.monotonic()
    time.sleep(GAP_S)
    second_asked = time.monotonic()
    after = scrape(server)
    return (before, after), second_asked - first_answered, time.monotonic() - start
