"""The keyed work queue's promises: dedupe, one worker per key, delays, backoff."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable

from tti_operator.workqueue import Backoff, WorkQueue, work


def run(scenario: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(scenario(), 5))  # type: ignore[arg-type]


async def drained(queue: WorkQueue[str], keys: int) -> list[str]:
    return [await queue.get() for _ in range(keys)]


def test_a_key_added_many_times_is_handed_out_once() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        for key in ("a", "b", "a", "a", "b", "c"):
            queue.add(key)
        assert len(queue) == 3
        assert await drained(queue, 3) == ["a", "b", "c"]  # first come, first served

    run(scenario)


def test_a_key_added_while_processed_waits_until_done() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        assert await queue.get() == "a"
        queue.add("a")
        queue.add("a")
        assert len(queue) == 0 and queue.busy()  # never two workers on one key
        queue.done("a")
        assert len(queue) == 1 and await queue.get() == "a"
        queue.done("a")
        assert queue.idle()

    run(scenario)


def test_workers_never_reconcile_one_key_twice_at_once() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        running: set[str] = set()
        overlaps, calls = [], []

        async def reconcile(key: str) -> float | None:
            overlaps.append(key in running)
            running.add(key)
            calls.append(key)
            await asyncio.sleep(0.01)
            running.discard(key)
            return None

        workers = [asyncio.create_task(work(queue, reconcile)) for _ in range(4)]
        for _ in range(3):
            for key in ("a", "b"):
                queue.add(key)
            await asyncio.sleep(0.003)
        while not queue.idle():
            await asyncio.sleep(0.005)
        for worker in workers:
            worker.cancel()
        assert not any(overlaps)
        assert 2 <= calls.count("a") <= 3 and 2 <= calls.count("b") <= 3

    run(scenario)


def test_of_several_delays_the_earliest_wins_and_an_add_supersedes_them() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add_after("a", 10)
        queue.add_after("a", 0.02)
        queue.add_after("a", 5)
        assert len(queue) == 0 and not queue.idle()
        assert await asyncio.wait_for(queue.get(), 1) == "a"
        queue.done("a")
        assert queue.idle()  # the later delays are gone with the earliest
        queue.add_after("b", 10)
        queue.add("b")
        assert await queue.get() == "b"
        queue.done("b")
        assert queue.idle()  # the delayed one was superseded

    run(scenario)


def test_a_delay_for_a_key_already_queued_is_dropped() -> None:
    """It runs soon anyway and reads the latest state when it does."""

    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        queue.add_after("a", 10)
        assert await queue.get() == "a"
        queue.done("a")
        assert queue.idle()

    run(scenario)


def test_retries_back_off_exponentially_up_to_a_cap_and_forget_resets() -> None:
    backoff = Backoff(base_s=1, max_s=30)
    assert [backoff.delay_s(n) for n in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    assert backoff.delay_s(10_000) == 30

    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(Backoff(base_s=0.01, max_s=0.02))
        assert [queue.add_rate_limited("a") for _ in range(3)] == [0.01, 0.02, 0.02]
        assert queue.failures("a") == 3
        queue.forget("a")
        assert queue.add_rate_limited("a") == 0.01

    run(scenario)


def test_a_failing_key_is_retried_with_backoff_and_the_others_go_on() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue(Backoff(base_s=0.01, max_s=0.04))
        calls: list[tuple[str, float]] = []
        failing = {"bad"}
        loop = asyncio.get_running_loop()
        reported: list[float] = []

        async def reconcile(key: str) -> float | None:
            calls.append((key, loop.time()))
            if key in failing:
                raise RuntimeError("not yet")
            return None

        worker = asyncio.create_task(
            work(queue, reconcile, lambda _key, _error, delay: reported.append(delay))
        )
        queue.add("bad")
        queue.add("good")
        while len([c for c in calls if c[0] == "bad"]) < 5:
            await asyncio.sleep(0.005)
        assert calls[1][0] == "good"  # right after the first failure, not after the retries
        assert reported[:4] == [0.01, 0.02, 0.04, 0.04]
        times = [t for key, t in calls if key == "bad"]
        assert all(later - earlier >= 0.009 for earlier, later in itertools.pairwise(times))
        failing.clear()
        while not queue.idle():
            await asyncio.sleep(0.005)
        assert queue.failures("bad") == 0
        worker.cancel()

    run(scenario)


def test_a_reconcile_that_asks_to_look_again_is_requeued_after_that_delay() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        calls: list[str] = []

        async def reconcile(key: str) -> float | None:
            calls.append(key)
            return 0.01 if len(calls) == 1 else None

        worker = asyncio.create_task(work(queue, reconcile))
        queue.add("a")
        while len(calls) < 2 or not queue.idle():
            await asyncio.sleep(0.005)
        worker.cancel()
        assert calls == ["a", "a"]

    run(scenario)


def test_after_shut_down_nothing_is_added_and_no_delay_fires() -> None:
    async def scenario() -> None:
        queue: WorkQueue[str] = WorkQueue()
        queue.add_after("a", 0.01)
        queue.shut_down()
        queue.add("b")
        await asyncio.sleep(0.03)
        assert queue.idle()

    run(scenario)
