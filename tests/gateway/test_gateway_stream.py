"""OpenAI's streamed partial images through a real gateway process, with the official client.

The pods are `support.event_pod.EventPod`s: real HTTP servers that stream events on cue
(wait for the client to have seen the first, stall, space events apart), which a tti-server
cannot be made to do. Every assertion is on order and cause, none on time: "streamed, not
buffered" is a pod that writes its second event only once the client has its first.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Generator, Iterator

import openai
import pytest
from support.clients import openai_client, sample
from support.event_pod import EventPod, Pace
from support.gateway import StartGateway
from support.server import ServerProcess, free_port

pytestmark = pytest.mark.slow

PARTIALS = 2
Event = tuple[str, int | None]  # type, partial_image_index
IN_ORDER: list[Event] = [
    *(("image_generation.partial_image", index) for index in range(PARTIALS)),
    ("image_generation.completed", None),
]


def stream(gateway: ServerProcess, model: str = "m") -> Generator[Event, None, None]:
    """The events of one streamed generation, as the official client parses them."""
    with openai_client(gateway.url, timeout=60) as client:
        events = client.images.generate(
            model=model, prompt="a lighthouse", stream=True, partial_images=PARTIALS
        )
        for item in events:
            yield item.type, getattr(item, "partial_image_index", None)


def generate(gateway: ServerProcess) -> bool:
    """Whether one generation without streaming gave an image."""
    with openai_client(gateway.url, timeout=60) as client:
        return bool(client.images.generate(model="m", prompt="x").data)


def requests(gateway: ServerProcess, status: int) -> float:
    """Requests for model `m` the gateway counted with `status`."""
    counted = f'tti_gateway_requests_total{{model="m",namespace="",status="{status}"'
    return sample(gateway.metrics_url, counted)


def wait_until(condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition did not come true"
        time.sleep(0.05)


@pytest.fixture
def pods() -> Iterator[list[EventPod]]:
    started: list[EventPod] = []
    yield started
    for pod in started:
        pod.close()


def test_events_arrive_in_order_each_as_the_pod_sends_it(
    pods: list[EventPod], start_gateway: StartGateway
) -> None:
    pod = EventPod(Pace.WAIT_FOR_CLIENT)
    pods.append(pod)
    gateway = start_gateway("--models", f"m={pod.url}")
    seen: list[Event] = []
    for item in stream(gateway):
        seen.append(item)
        pod.first_seen.set()  # the pod writes the rest only now
    assert seen == IN_ORDER
    # Had the gateway held the answer back, the pod would have gone on without the cue.
    assert pod.waited_for_client
    assert requests(gateway, 200) == 1


def test_a_stream_longer_than_the_upstream_timeout_is_not_cut(
    pods: list[EventPod], start_gateway: StartGateway
) -> None:
    pod = EventPod(Pace.GAP, gap=0.6)  # three events: longer than the timeout of 1 s
    pods.append(pod)
    gateway = start_gateway("--models", f"m={pod.url}", "--upstream-timeout", "1")
    assert list(stream(gateway)) == IN_ORDER
    # Read to its end, the connection went back to the pool and serves the next request.
    assert generate(gateway)
    assert (pod.connections, pod.streams_done, pod.plain) == (1, 1, 1)


def test_a_stream_silent_past_the_idle_timeout_is_ended(
    pods: list[EventPod], start_gateway: StartGateway
) -> None:
    pod = EventPod(Pace.STALL)
    pods.append(pod)
    gateway = start_gateway("--models", f"m={pod.url}", "--stream-idle-timeout", "0.5")
    seen: list[Event] = []
    # Its status went out with the head: the body ends unfinished, which the client sees.
    with pytest.raises(openai.APIConnectionError):
        seen.extend(stream(gateway))
    assert seen == IN_ORDER[:1]
    assert pod.hung_up.wait(30), "the gateway kept its connection to the stalled pod open"
    assert requests(gateway, 504) == 1
    assert "silent for --stream-idle-timeout (0.5 s)" in gateway.output()
    assert "Traceback" not in gateway.output()


def test_an_error_event_reaches_the_client_as_the_pod_sent_it(
    pods: list[EventPod], start_gateway: StartGateway
) -> None:
    pod = EventPod(Pace.FAIL)
    pods.append(pod)
    gateway = start_gateway("--models", f"m={pod.url}")
    seen: list[Event] = []
    with pytest.raises(openai.APIError, match="the model failed"):
        seen.extend(stream(gateway))
    assert seen == IN_ORDER[:1]


def test_a_client_that_leaves_closes_the_pods_connection(
    pods: list[EventPod], start_gateway: StartGateway
) -> None:
    pod = EventPod(Pace.STALL)
    pods.append(pod)
    gateway = start_gateway("--models", f"m={pod.url}")  # the idle timeout: 300 s
    events = stream(gateway)
    assert next(events) == IN_ORDER[0]
    events.close()  # the client's connection with it
    assert pod.hung_up.wait(30), "the pod's connection outlived the client's"
    # That connection was not pooled: the next request gets a new one.
    assert generate(gateway)
    assert (pod.connections, pod.plain) == (2, 1)
    assert requests(gateway, 499) == 1
    assert "the client left the event stream" in gateway.output()


def test_a_stream_counts_as_in_flight_for_its_whole_length(
    pods: list[EventPod], start_gateway: StartGateway
) -> None:
    pods.extend(EventPod(Pace.WAIT_FOR_CLIENT) for _ in range(2))
    gateway = start_gateway("--models", "m=" + ",".join(pod.url for pod in pods))
    events = stream(gateway)
    assert next(events) == IN_ORDER[0]
    busy, idle = sorted(pods, key=lambda pod: -pod.streams)
    for _ in range(2):  # with the stream not counted, ties would rotate: one to each
        assert generate(gateway)
    for pod in pods:
        pod.first_seen.set()
    assert list(events) == IN_ORDER[1:]
    assert (busy.streams, busy.plain, idle.streams, idle.plain) == (1, 0, 0, 2)


def test_a_stream_to_a_model_at_zero_is_held_then_streamed(
    pods: list[EventPod], start_gateway: StartGateway
) -> None:
    port = free_port()
    gateway = start_gateway("--models", f"late=http://127.0.0.1:{port}", "--probe-interval", "0.1")
    seen: list[Event] = []
    call = threading.Thread(target=lambda: seen.extend(stream(gateway, "late")))
    call.start()
    wait_until(lambda: sample(gateway.metrics_url, 'tti_gateway_held_requests{model="late"') == 1)
    pods.append(EventPod(Pace.GAP, port=port))
    call.join(60)
    assert seen == IN_ORDER
    assert sample(gateway.metrics_url, 'tti_gateway_cold_starts_total{model="late"') == 1
