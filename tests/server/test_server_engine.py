"""The engine on its own: batching, each request's own images, failure isolation,
least-loaded dispatch, the bounded queue and the timeout.

The backends are the real stub wrapped to record batches, to hold a batch until
the test releases it (a gate, so nothing here depends on timing), or to fail.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from PIL import Image

from tti_server.backends.base import BackendOutOfMemory, BatchKey, GenerationRequest
from tti_server.backends.stub import StubBackend
from tti_server.engine import Engine
from tti_server.failures import (
    EngineStopped,
    GenerationFailed,
    GenerationTimeout,
    OutOfMemory,
    QueueFull,
)

T = TypeVar("T")
SMALL = BatchKey(height=8, width=8, num_steps=1, guidance_scale=0.0, negative_prompt=None)
OTHER = BatchKey(height=16, width=8, num_steps=1, guidance_scale=0.0, negative_prompt=None)
WAIT_S = 10.0  # upper bound for a thread handshake; never reached when the engine works


class Recording(StubBackend):
    """The stub, recording each batch's prompts; a gate can hold batches until released.

    Each image is coloured with its request's seed, so a test can tell whose image it is.
    """

    def __init__(self, gated: bool = False, fail_on: str | None = None) -> None:
        super().__init__()
        self.batches: list[list[str]] = []
        self.started = threading.Event()
        self.gate = threading.Event()
        if not gated:
            self.gate.set()
        self.fail_on = fail_on
        self.released = 0

    def generate(self, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
        self.batches.append([r.prompt for r in batch])
        self.started.set()
        assert self.gate.wait(WAIT_S), "test never released the gate"
        if self.fail_on in {r.prompt for r in batch}:
            raise RuntimeError(f"injected failure for {self.fail_on}")
        if "oom" in {r.prompt for r in batch}:
            raise BackendOutOfMemory("CUDA out of memory (injected)")
        return [
            [Image.new("RGB", (r.key.width, r.key.height), (r.seed or 0, i, 0)) for i in range(r.n)]
            for r in batch
        ]

    def release_memory(self) -> None:
        self.released += 1


def request(prompt: str, key: BatchKey = SMALL, n: int = 1, seed: int = 0) -> GenerationRequest:
    return GenerationRequest(prompt=prompt, key=key, n=n, seed=seed)


def run_with_engine(
    backends: list[Recording],
    scenario: Callable[[Engine], Awaitable[T]],
    **options: float,
) -> T:
    async def main() -> T:
        settings: dict[str, float] = {
            "max_queue": 16,
            "request_timeout": WAIT_S,
            "max_batch_size": 4,
            "batch_wait": 0.0,
            **options,
        }
        engine = Engine(
            backends,
            max_queue=int(settings["max_queue"]),
            request_timeout=settings["request_timeout"],
            max_batch_size=int(settings["max_batch_size"]),
            batch_wait=settings["batch_wait"],
        )
        engine.start()
        try:
            return await scenario(engine)
        finally:
            for backend in backends:
                backend.gate.set()
            await engine.stop()

    return asyncio.run(main())


async def until_started(backend: Recording) -> None:
    assert await asyncio.to_thread(backend.started.wait, WAIT_S), "no batch started"


async def occupy(engine: Engine, backend: Recording) -> asyncio.Task[list[Image.Image]]:
    """Send one request and wait until the (gated) backend is busy with it."""
    task = asyncio.create_task(engine.generate(request("occupier")))
    await until_started(backend)
    return task


def test_compatible_requests_share_a_batch_and_incompatible_ones_do_not() -> None:
    backend = Recording(gated=True)

    async def scenario(engine: Engine) -> list[list[Image.Image]]:
        first = await occupy(engine, backend)
        prompts = [("c1", SMALL), ("i1", OTHER), ("c2", SMALL), ("c3", SMALL), ("i2", OTHER)]
        tasks = [asyncio.create_task(engine.generate(request(p, key))) for p, key in prompts]
        await asyncio.sleep(0)  # let them queue behind the busy worker
        backend.gate.set()
        return [await first, *await asyncio.gather(*tasks)]

    results = run_with_engine([backend], scenario)
    assert backend.batches == [["occupier"], ["c1", "c2", "c3"], ["i1", "i2"]]
    assert [image.size for (image,) in results] == [
        (8, 8),
        (8, 8),
        (8, 16),
        (8, 8),
        (8, 8),
        (8, 16),
    ]


def test_each_request_gets_exactly_its_own_images() -> None:
    backend = Recording(gated=True)

    async def scenario(engine: Engine) -> list[list[Image.Image]]:
        first = await occupy(engine, backend)
        tasks = [
            asyncio.create_task(engine.generate(request(f"r{seed}", n=n, seed=seed)))
            for seed, n in ((11, 1), (22, 2), (33, 1))
        ]
        await asyncio.sleep(0)
        backend.gate.set()
        await first
        return list(await asyncio.gather(*tasks))

    results = run_with_engine([backend], scenario)
    assert backend.batches[1] == ["r11", "r22", "r33"]  # one call for all three
    colours = [[image.getpixel((0, 0)) for image in images] for images in results]
    assert colours == [[(11, 0, 0)], [(22, 0, 0), (22, 1, 0)], [(33, 0, 0)]]


def test_batches_never_exceed_max_batch_size_images() -> None:
    backend = Recording(gated=True)

    async def scenario(engine: Engine) -> None:
        first = await occupy(engine, backend)
        sizes = [("a", 1), ("b", 1), ("c", 3), ("d", 1), ("e", 1), ("f", 1), ("g", 1)]
        tasks = [asyncio.create_task(engine.generate(request(p, n=n))) for p, n in sizes]
        await asyncio.sleep(0)
        backend.gate.set()
        await asyncio.gather(first, *tasks)

    run_with_engine([backend], scenario, max_batch_size=4)
    # Oldest first; a request that does not fit waits for the next batch, never split.
    assert backend.batches[1:] == [["a", "b", "d", "e"], ["c", "f"], ["g"]]


def test_max_batch_size_1_turns_batching_off() -> None:
    backend = Recording(gated=True)

    async def scenario(engine: Engine) -> None:
        first = await occupy(engine, backend)
        tasks = [asyncio.create_task(engine.generate(request(p))) for p in "abc"]
        await asyncio.sleep(0)
        backend.gate.set()
        await asyncio.gather(first, *tasks)

    run_with_engine([backend], scenario, max_batch_size=1)
    assert backend.batches == [["occupier"], ["a"], ["b"], ["c"]]


def test_the_batch_window_gathers_requests_that_arrive_within_it() -> None:
    backend = Recording()

    async def scenario(engine: Engine) -> None:
        first = asyncio.create_task(engine.generate(request("early")))
        await asyncio.sleep(0.01)  # well inside the window below
        await asyncio.gather(first, engine.generate(request("late")))

    run_with_engine([backend], scenario, batch_wait=5.0)
    assert backend.batches == [["early", "late"]]


def test_a_failing_batch_fails_only_its_requests_and_the_worker_keeps_serving() -> None:
    backend = Recording(gated=True, fail_on="boom")

    async def scenario(engine: Engine) -> list[object]:
        first = await occupy(engine, backend)
        doomed = [asyncio.create_task(engine.generate(request(p))) for p in ("boom", "x")]
        other = asyncio.create_task(engine.generate(request("other-size", OTHER)))
        await asyncio.sleep(0)
        backend.gate.set()
        outcomes = await asyncio.gather(first, *doomed, other, return_exceptions=True)
        after = await engine.generate(request("after"))
        return [*outcomes, after]

    first, boom, neighbour, other, after = run_with_engine([backend], scenario)
    assert isinstance(boom, GenerationFailed)
    assert isinstance(neighbour, GenerationFailed)  # same batch, same fate
    assert str(boom) == "generation failed: RuntimeError: injected failure for boom"
    for images in (first, other, after):
        assert isinstance(images, list) and len(images) == 1
    assert backend.released == 1
    assert backend.batches[-1] == ["after"]


def test_out_of_memory_is_its_own_error_and_releases_memory() -> None:
    backend = Recording()

    async def scenario(engine: Engine) -> tuple[BaseException | list[Image.Image], ...]:
        oom = await asyncio.gather(engine.generate(request("oom")), return_exceptions=True)
        return (*oom, await engine.generate(request("fine")))

    oom, fine = run_with_engine([backend], scenario)
    assert isinstance(oom, OutOfMemory)
    assert backend.released == 1
    assert isinstance(fine, list)


def test_a_backend_returning_the_wrong_number_of_images_fails_cleanly() -> None:
    class Short(Recording):
        def generate(self, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
            return super().generate(batch)[:-1]

    async def scenario(engine: Engine) -> BaseException | list[Image.Image]:
        (outcome,) = await asyncio.gather(engine.generate(request("a")), return_exceptions=True)
        return outcome

    outcome = run_with_engine([Short()], scenario)
    assert isinstance(outcome, GenerationFailed)
    assert "wrong number of images" in str(outcome)


def test_work_goes_to_the_idle_worker_not_behind_the_busy_one() -> None:
    busy, idle = Recording(gated=True), Recording(gated=True)

    async def scenario(engine: Engine) -> None:
        tasks = [asyncio.create_task(engine.generate(request("first")))]
        await until_started(busy)  # worker 0 is listed first and idle: it takes the first
        tasks.append(asyncio.create_task(engine.generate(request("second"))))
        await until_started(idle)  # worker 0 is held at its gate, so worker 1 must take this
        busy.gate.set()
        idle.gate.set()
        await asyncio.gather(*tasks)

    run_with_engine([busy, idle], scenario, max_batch_size=1)
    assert (busy.batches, idle.batches) == ([["first"]], [["second"]])


def test_a_full_queue_refuses_at_once_and_recovers() -> None:
    backend = Recording(gated=True)

    async def scenario(engine: Engine) -> list[BaseException | list[Image.Image]]:
        first = await occupy(engine, backend)
        waiting = [asyncio.create_task(engine.generate(request(p))) for p in ("q1", "q2")]
        await asyncio.sleep(0)
        assert engine.queue_depth == 2
        with pytest.raises(QueueFull, match="2 requests are already waiting"):
            await engine.generate(request("refused"))
        backend.gate.set()
        done = await asyncio.gather(first, *waiting, return_exceptions=True)
        return [*done, await engine.generate(request("later"))]

    outcomes = run_with_engine([backend], scenario, max_queue=2, max_batch_size=1)
    assert all(isinstance(outcome, list) for outcome in outcomes)


def test_a_request_that_outlives_the_timeout_fails_and_leaves_the_queue() -> None:
    backend = Recording(gated=True)

    async def scenario(engine: Engine) -> int:
        first = asyncio.create_task(engine.generate(request("slow")))
        await until_started(backend)
        with pytest.raises(GenerationTimeout, match=r"did not finish within 0\.2 s"):
            await engine.generate(request("waits too long"))
        depth = engine.queue_depth
        with pytest.raises(GenerationTimeout):
            await first
        backend.gate.set()
        await engine.generate(request("after"))
        return depth

    assert run_with_engine([backend], scenario, request_timeout=0.2) == 0
    assert ["waits too long"] not in backend.batches  # abandoned work is never run
    assert backend.batches[-1] == ["after"]


def test_each_request_times_out_at_its_own_deadline() -> None:
    backend = Recording(gated=True)

    async def scenario(engine: Engine) -> tuple[bool, bool]:
        first = asyncio.create_task(engine.generate(request("first")))
        await until_started(backend)
        await asyncio.sleep(0.25)  # the second arrives later, so its deadline is later
        second = asyncio.create_task(engine.generate(request("second")))
        with pytest.raises(GenerationTimeout):
            await first
        second_done_with_first = second.done()
        with pytest.raises(GenerationTimeout):
            await second
        backend.gate.set()
        await engine.generate(request("after"))  # the engine still serves
        return second_done_with_first, engine.queue_depth == 0

    assert run_with_engine([backend], scenario, request_timeout=0.5) == (False, True)


def test_stopping_fails_waiting_requests() -> None:
    backend = Recording(gated=True)

    async def scenario(engine: Engine) -> None:
        await occupy(engine, backend)
        waiting = asyncio.create_task(engine.generate(request("w")))
        await asyncio.sleep(0)
        await engine.stop()
        with pytest.raises(EngineStopped):
            await waiting
        with pytest.raises(EngineStopped):
            await engine.generate(request("too late"))

    run_with_engine([backend], scenario)


@pytest.mark.parametrize(
    ("device", "finishing_thread"), [("cpu", "tti-worker-0"), ("cuda:0", "tti-finish")]
)
def test_finishing_runs_off_the_loop_and_off_an_accelerator_worker(
    device: str, finishing_thread: str
) -> None:
    backend = Recording()
    backend.device = device  # the engine decides by the device name alone

    async def scenario(engine: Engine) -> tuple[str, bool]:
        loop_thread = threading.current_thread().name

        def finish(images: list[Image.Image]) -> tuple[str, bool]:
            name = threading.current_thread().name
            return name, name == loop_thread

        return await engine.generate_then(request("finish me"), finish)

    thread_name, on_loop = run_with_engine([backend], scenario)
    assert thread_name.startswith(finishing_thread)
    assert not on_loop


def test_a_failing_finish_step_fails_only_its_request() -> None:
    backend = Recording(gated=True)

    def explode(images: list[Image.Image]) -> None:
        raise OSError("disk full")

    async def scenario(engine: Engine) -> list[object]:
        first = await occupy(engine, backend)
        bad = asyncio.create_task(engine.generate_then(request("bad"), explode))
        good = asyncio.create_task(engine.generate(request("good")))
        await asyncio.sleep(0)
        backend.gate.set()
        return list(await asyncio.gather(first, bad, good, return_exceptions=True))

    _, bad, good = run_with_engine([backend], scenario)
    assert backend.batches[1] == ["bad", "good"]
    assert isinstance(bad, GenerationFailed)
    assert str(bad) == "finishing failed: disk full"
    assert isinstance(good, list)


class FinishGate:
    """A finish step held until the test opens it, on an accelerator's worker (whose
    batches the finishing pool answers, so the worker is free meanwhile)."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.opened = threading.Event()

    def __call__(self, images: list[Image.Image]) -> list[Image.Image]:
        self.started.set()
        assert self.opened.wait(WAIT_S), "test never opened the finish gate"
        return images


def accelerator() -> Recording:
    backend = Recording()
    backend.device = "cuda:0"  # the engine decides by the device name alone
    return backend


async def until_collected(engine: Engine) -> None:
    """Until the free worker has taken every waiting request into its open batch."""
    while engine.queue_depth:
        await asyncio.sleep(0)


def test_the_window_waits_for_the_clients_of_a_batch_still_being_finished() -> None:
    # Closed-loop clients in two halves: half "a" is being finished when half "b" arrives.
    # With no batch window at all, the free worker still waits for "a" to be answered and
    # for its clients to come back, and runs both halves as one batch.
    backend, gate = accelerator(), FinishGate()

    async def scenario(engine: Engine) -> None:
        async def client(name: str) -> None:
            await engine.generate_then(request(f"{name}-first"), gate)
            await engine.generate_then(request(f"{name}-again"), gate)

        first_half = [asyncio.create_task(client(f"a{i}")) for i in range(4)]
        assert await asyncio.to_thread(gate.started.wait, WAIT_S)
        second_half = [
            asyncio.create_task(engine.generate_then(request(f"b{i}"), gate)) for i in range(4)
        ]
        await until_collected(engine)
        gate.opened.set()
        await asyncio.gather(*first_half, *second_half)

    run_with_engine([backend], scenario, max_batch_size=8, batch_wait=0.0)
    assert backend.batches[0] == [f"a{i}-first" for i in range(4)]
    assert backend.batches[1] == [f"b{i}" for i in range(4)] + [f"a{i}-again" for i in range(4)]


def test_a_full_batch_runs_while_the_previous_one_is_being_finished() -> None:
    backend, gate = accelerator(), FinishGate()

    async def scenario(engine: Engine) -> None:
        first = asyncio.create_task(engine.generate_then(request("first"), gate))
        assert await asyncio.to_thread(gate.started.wait, WAIT_S)
        full = [asyncio.create_task(engine.generate_then(request(f"f{i}"), gate)) for i in range(4)]
        while len(backend.batches) < 2:  # generated although "first" is not answered yet
            await asyncio.sleep(0.001)
        assert not first.done()
        gate.opened.set()
        await asyncio.gather(first, *full)

    run_with_engine([backend], scenario, max_batch_size=4)
    assert backend.batches == [["first"], [f"f{i}" for i in range(4)]]


def test_the_window_closes_when_the_answered_clients_do_not_come_back() -> None:
    backend, gate = accelerator(), FinishGate()

    async def scenario(engine: Engine) -> None:
        first = asyncio.create_task(engine.generate_then(request("one-off"), gate))
        assert await asyncio.to_thread(gate.started.wait, WAIT_S)
        waiting = [
            asyncio.create_task(engine.generate_then(request(f"w{i}"), gate)) for i in range(2)
        ]
        await until_collected(engine)
        gate.opened.set()
        await asyncio.gather(first, *waiting)

    run_with_engine([backend], scenario, max_batch_size=8, batch_wait=0.0)
    assert backend.batches == [["one-off"], ["w0", "w1"]]


def test_a_request_joining_keeps_the_window_open_for_another() -> None:
    # Each request that joins opens the window again for batch_wait, so three requests
    # 1 s apart share a 1.5 s window's batch, which a window fixed at the first would
    # split (the margins are wide: 0.5 s either way).
    backend = Recording()

    async def scenario(engine: Engine) -> None:
        tasks = [asyncio.create_task(engine.generate(request("r0")))]
        for name in ("r1", "r2"):
            await asyncio.sleep(1.0)
            tasks.append(asyncio.create_task(engine.generate(request(name))))
        await asyncio.gather(*tasks)

    run_with_engine([backend], scenario, max_batch_size=8, batch_wait=1.5)
    assert backend.batches == [["r0", "r1", "r2"]]


def test_an_accelerator_batch_is_finished_side_by_side() -> None:
    # Each finish step waits for the other: finished one after another, neither would end.
    backend = accelerator()
    both = threading.Barrier(2)

    def meet(images: list[Image.Image]) -> str:
        both.wait(WAIT_S)
        return threading.current_thread().name

    async def scenario(engine: Engine) -> list[str]:
        occupier = await occupy(engine, backend)
        pair = [asyncio.create_task(engine.generate_then(request(p), meet)) for p in ("x", "y")]
        await until_collected(engine)
        await occupier
        return list(await asyncio.gather(*pair))

    threads = run_with_engine([backend], scenario)
    assert backend.batches[1] == ["x", "y"]
    assert len(set(threads)) == 2


def test_requests_for_another_adapter_wait_no_more_than_one_batch() -> None:
    # While a batch runs, requests for adapters a and b queue up interleaved: the next
    # batch takes every `a` (the oldest request's adapter), the one after it the `b`s, so
    # `b` waits one batch, and requests of one adapter never share a call with another's.
    backend = Recording(gated=True)
    a = BatchKey(8, 8, 1, 0.0, None, adapter="a")
    b = BatchKey(8, 8, 1, 0.0, None, adapter="b")

    async def scenario(engine: Engine) -> None:
        tasks = [asyncio.create_task(engine.generate(request("running")))]
        await until_started(backend)
        for prompt, key in [("a1", a), ("b1", b), ("a2", a), ("b2", b), ("a3", a)]:
            tasks.append(asyncio.create_task(engine.generate(request(prompt, key))))
        while engine.queue_depth < 5:
            await asyncio.sleep(0)
        backend.gate.set()
        await asyncio.gather(*tasks)

    run_with_engine([backend], scenario, max_batch_size=8)
    assert backend.batches == [["running"], ["a1", "a2", "a3"], ["b1", "b2"]]
