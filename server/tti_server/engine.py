"""The engine: a bounded queue, dynamic batching and one worker thread per backend.

Requests wait in one FIFO queue. Each worker is an asyncio task that owns one
backend and one thread: when it is free it takes the oldest request, gathers
compatible ones (same `BatchKey`) into its batch while its batch window is open
(below) or until the batch holds `max_batch_size` images, and runs them as one
`backend.generate` call on its thread. Because only free workers take work, a
request always goes to the least-loaded worker and never waits behind a busy one
while another idles.

The batch window stays open while more requests are likely: it closes `batch_wait`
after the last sign of one (the window's start, a compatible request joining, an
answer going out); not while requests are still being finished off the worker; and
not while clients answered since have not all come back (each arrival counts as one
coming back), for at most one batch's run time after their answer, since idling longer
would cost more than running the batch without them.

Why: most load is closed-loop (a client, or a gateway's connection, sends its next
request when answered), so the likeliest next arrivals are the clients of the batch
just run. A window counted from the first request alone closes before they are back
whenever answering and their round trip take longer than `batch_wait` (encoding a PNG
of 512x512 noise takes 60 ms): the worker then runs whatever arrived while it was
busy, the clients it has just answered queue up during that batch and form the next
one, and from then on the two halves stay out of phase, each arriving while the
other's batch runs (measured: 4 images per call at 8 clients of at most 8, on one
H100 and with the tiny model on the CPU). Waiting for the answered clients merges the
halves again. A batch that is full never waits, so a backlog still keeps the device
busy while the previous batch is being encoded; and with no answered client missing
(one client, or open-loop arrivals) the window is `batch_wait` after the last arrival.

Each request may carry a `finish` step (the server encodes images with it), run
off the event loop. A CUDA worker hands its batch to the finishing pool, which
finishes the requests side by side (PIL's encoders release the GIL, so a batch's
images encode in parallel on the host's cores) and answers them together, while the
worker goes straight back to the GPU. A CPU worker finishes the batch itself and
answers it with one loop wake-up, since its device is the CPU
anyway and a hand-off would only add a thread switch (the dominant cost of a cheap
request: measured with tests/benchmarks/bench_stub_server.py).

A batch that raises fails only its own requests; the worker releases device
memory and keeps serving. Nothing here knows about HTTP or gRPC: its errors are
`failures.EngineError`s, which each transport maps to its own codes.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar, cast

from PIL import Image

from tti_server.backends.base import AdapterGone, Backend, BackendOutOfMemory, GenerationRequest
from tti_server.failures import (
    AdapterRemoved,
    EngineError,
    EngineStopped,
    GenerationFailed,
    GenerationTimeout,
    OutOfMemory,
    QueueFull,
    QueueTimeout,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
Images = list[Image.Image]
#: Per request: what its finish step returned, or the error to raise instead.
Outcomes = list[tuple["_Job", Any, "EngineError | None"]]


@dataclass
class Concurrency:
    """Requests in the engine (queued or running, HTTP and gRPC alike) and the integral of
    that count over time: its increase over any interval, divided by the interval, is the
    mean concurrency then, which an autoscaler reads instead of a jumpy instant sample."""

    now: int = 0
    _seconds: float = 0.0
    _since: float = field(default_factory=time.monotonic)

    def change(self, delta: int) -> None:
        moment = time.monotonic()
        self._seconds += self.now * (moment - self._since)
        self._since, self.now = moment, self.now + delta

    @property
    def seconds(self) -> float:
        """Request-seconds spent in the engine so far."""
        return self._seconds + self.now * (time.monotonic() - self._since)


@dataclass
class EngineStats:
    """Counters the metrics endpoint reads."""

    images_generated: int = 0
    batches: int = 0
    failed_batches: int = 0
    running: int = 0  # requests in a pipeline call right now
    in_flight: Concurrency = field(default_factory=Concurrency)


@dataclass(eq=False)
class _Job:
    request: GenerationRequest
    finish: Callable[[Images], Any]
    future: asyncio.Future[Any]


@dataclass(eq=False)
class Worker:
    """One backend and the one thread that may call it."""

    index: int
    backend: Backend
    executor: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"tti-worker-{self.index}")

    @property
    def hands_off_finishing(self) -> bool:
        """Keep an accelerator fed: let other threads encode while it generates."""
        return not self.backend.device.startswith("cpu")


class Engine:
    """Queue, batch and run generation requests on a set of loaded backends."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        max_queue: int,
        request_timeout: float,
        max_batch_size: int = 1,
        batch_wait: float = 0.0,
        finish_threads: int | None = None,
    ) -> None:
        if not backends:
            raise ValueError("the engine needs at least one backend")
        self.workers = [Worker(index, backend) for index, backend in enumerate(backends)]
        self.max_queue = max_queue
        self.request_timeout = request_timeout
        self.max_batch_size = max_batch_size
        self.batch_wait = batch_wait
        self.stats = EngineStats()
        self._pending: deque[_Job] = deque()
        # Every request, queued or running, with its deadline. One timeout for all, so
        # insertion order is deadline order and one timer, armed for the oldest, serves
        # them all (a timer per request cost a libuv timer handle each).
        self._deadlines: dict[_Job, float] = {}
        self._expiry: asyncio.TimerHandle | None = None
        # Free workers park on these futures; each arrival and each answer wakes them all.
        self._waiters: list[asyncio.Future[None]] = []
        # Requests handed to the finishing pool and not yet answered: their clients are
        # likely to send more, so an open batch window waits for them (module docstring).
        self._finishing = 0
        self._last_answer = -math.inf  # loop time the latest batch was answered
        # Requests answered whose clients have not come back (each arrival counts as one),
        # expected until one batch's run time after the latest answer.
        self._returning = 0
        self._returns_until = -math.inf
        self._batch_s = 0.0  # how long the latest batch ran
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False
        # One thread per image of a full batch, as far as the host has cores: PIL's encoders
        # release the GIL, so a batch's images encode side by side. Threads start on first
        # use, so CPU workers, which finish on their own thread, never start any.
        threads = finish_threads or max(2, min(max_batch_size, os.cpu_count() or 2))
        self._finishers = ThreadPoolExecutor(threads, thread_name_prefix="tti-finish")

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a worker."""
        return len(self._pending)

    def start(self) -> None:
        """Start one worker task per backend on the running loop."""
        self._tasks = [
            asyncio.create_task(self._serve(worker), name=f"tti-worker-{worker.index}")
            for worker in self.workers
        ]

    async def stop(self) -> None:
        """Fail waiting requests, stop the workers and let their threads finish."""
        self._stopped = True
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        while self._pending:
            _fail(self._pending.popleft(), EngineStopped("the server is shutting down"))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self.workers:
            worker.executor.shutdown(wait=False, cancel_futures=True)
        self._finishers.shutdown(wait=False, cancel_futures=True)

    def check_room(self) -> None:
        """Raise what a request arriving now would get at once: the queue is full, or the
        engine is stopping (a streamed request asks before its answer starts)."""
        if self._stopped:
            raise EngineStopped("the server is shutting down")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are already waiting; retry shortly")

    async def generate(self, request: GenerationRequest) -> Images:
        """Queue `request` and wait for its `n` images (raises an `EngineError` subclass)."""
        return await self.generate_then(request, _unchanged)

    async def generate_then(self, request: GenerationRequest, finish: Callable[[Images], T]) -> T:
        """Like `generate`, then `finish(images)` off the event loop; returns what it returns."""
        self.check_room()
        loop = asyncio.get_running_loop()
        job = _Job(request, finish, loop.create_future())
        self._pending.append(job)
        self._count_return(loop.time())
        self.stats.in_flight.change(1)
        self._wake_waiters()
        self._deadlines[job] = loop.time() + self.request_timeout
        if self._expiry is None:
            self._arm_expiry(loop)
        try:
            return cast(T, await job.future)
        finally:
            self.stats.in_flight.change(-1)
            del self._deadlines[job]
            if job.future.cancelled():  # the client went away
                self._withdraw(job)

    async def run_on_each_worker(self, request: GenerationRequest) -> None:
        """Run `request` once on every worker, bypassing the queue (the warm-up)."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(
                loop.run_in_executor(w.executor, _generate_checked, w.backend, [request])
                for w in self.workers
            )
        )

    async def call_on_each_worker(self, call: Callable[[Backend], T]) -> list[T]:
        """Run `call(backend)` on every worker's own thread, between its batches (a worker
        runs one batch at a time on that thread); return the results in worker order."""
        loop = asyncio.get_running_loop()
        return list(
            await asyncio.gather(
                *(loop.run_in_executor(w.executor, call, w.backend) for w in self.workers)
            )
        )

    def _arm_expiry(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wake at the oldest unanswered request's deadline (none left: the next arrival arms)."""
        for job, deadline in self._deadlines.items():
            if not job.future.done():
                self._expiry = loop.call_at(deadline, self._expire_due, loop)
                return

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail every request past its deadline, then wait for the next oldest."""
        self._expiry = None
        now = loop.time()
        for job, deadline in self._deadlines.items():
            if deadline > now:
                break
            self._expire(job)  # its generate_then call removes it from _deadlines
        self._arm_expiry(loop)

    def _expire(self, job: _Job) -> None:
        if not job.future.done():
            message = f"the request did not finish within {self.request_timeout:g} s"
            timeout = (
                QueueTimeout(f"{message}: it waited all that time for a free worker; retry later")
                if job in self._pending
                else GenerationTimeout(message)
            )
            job.future.set_exception(timeout)
            self._withdraw(job)

    def _withdraw(self, job: _Job) -> None:
        """A request that gave up leaves the queue (a running one just gets ignored)."""
        with contextlib.suppress(ValueError):
            self._pending.remove(job)

    def _wake_waiters(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._waiters.clear()

    def _next_event(self) -> asyncio.Future[None]:
        """Resolves at the next arrival or answer."""
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        return waiter

    async def _serve(self, worker: Worker) -> None:
        while True:
            await self._run(worker, await self._next_batch())

    async def _next_batch(self) -> list[_Job]:
        """Wait for the oldest live request, then gather compatible ones into its batch."""
        while not self._has_live_job():
            await self._next_event()
        batch = [self._pending.popleft()]
        if self.max_batch_size > 1:
            await self._fill(batch)
        return batch

    def _has_live_job(self) -> bool:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()
        return bool(self._pending)

    async def _fill(self, batch: list[_Job]) -> None:
        """Add compatible requests until the batch is full or its window closes: `batch_wait`
        after the last request joined or answer went out, and not while requests are being
        finished (the module docstring says why)."""
        loop = asyncio.get_running_loop()
        closes = loop.time() + self.batch_wait
        while _images(batch) < self.max_batch_size and _any_live(batch):
            if self._take_compatible(batch):
                closes = loop.time() + self.batch_wait
                continue
            if self._finishing:
                await self._next_event()
                continue
            remaining = max(closes, self._last_answer + self.batch_wait, self._returns_due())
            remaining -= loop.time()
            if remaining <= 0:
                return
            event = self._next_event()
            window = loop.call_later(remaining, _resolve, event)
            await event
            window.cancel()

    def _returns_due(self) -> float:
        """Until when answered clients may still come back (-inf: none expected)."""
        return self._returns_until if self._returning else -math.inf

    def _count_return(self, now: float) -> None:
        """An arrival: one answered client fewer to wait for (past the deadline: none)."""
        self._returning = max(0, self._returning - 1) if now < self._returns_until else 0

    def _take_compatible(self, batch: list[_Job]) -> bool:
        """Move waiting requests with the batch's key into it, oldest first, while they fit;
        whether any joined."""
        key = batch[0].request.key
        room = self.max_batch_size - _images(batch)
        joined = False
        for job in list(self._pending):
            if room <= 0:
                break
            if job.request.key == key and job.request.n <= room and not job.future.done():
                self._pending.remove(job)
                batch.append(job)
                room -= job.request.n
                joined = True
        return joined

    async def _run(self, worker: Worker, batch: list[_Job]) -> None:
        """Run one batch on the worker's thread, then answer it, or have the pool answer it."""
        live = [job for job in batch if not job.future.done()]
        if not live:
            return
        loop = asyncio.get_running_loop()
        self.stats.running += len(live)
        started = loop.time()
        try:
            results, outcomes = await loop.run_in_executor(
                worker.executor, _generate_and_finish, worker, live
            )
            self._batch_s = loop.time() - started
        except Exception as exc:
            self.stats.failed_batches += 1
            error = _client_error(exc, worker)
            for job in live:
                _fail(job, error)
            return
        finally:
            self.stats.running -= len(live)
        self.stats.batches += 1
        self.stats.images_generated += sum(len(images) for images in results)
        if outcomes is None:
            self._finish_in_pool(live, results)
        else:
            self._answer(outcomes)

    def _finish_in_pool(self, jobs: list[_Job], results: list[Images]) -> None:
        """Have the finishing pool finish the batch's requests side by side, then answer
        them together; until then they count as requests whose clients are likely to send
        more (the batch window waits for them)."""
        loop = asyncio.get_running_loop()
        self._finishing += len(jobs)
        finishing = asyncio.gather(
            *(
                loop.run_in_executor(self._finishers, _finish, [job], [images])
                for job, images in zip(jobs, results, strict=True)
            )
        )
        finishing.add_done_callback(functools.partial(self._answer_finished, jobs))

    def _answer_finished(self, jobs: list[_Job], finishing: asyncio.Future[list[Outcomes]]) -> None:
        self._finishing -= len(jobs)
        self._answer(_outcomes_of(finishing, jobs))

    def _answer(self, outcomes: Outcomes) -> None:
        """Settle each request still waited for; its client may now send another, so count
        it as returning and wake the open windows."""
        answered = 0
        for job, result, error in outcomes:
            if job.future.done():  # timed out or gone: no client will come back for it
                continue
            if error is None:
                job.future.set_result(result)
            else:
                job.future.set_exception(error)
            answered += 1
        if answered:
            self._last_answer = now = asyncio.get_running_loop().time()
            # Clients answered earlier and not back by now are not coming: forget them.
            self._returning = answered + (self._returning if now < self._returns_until else 0)
            self._returns_until = now + self._batch_s
        self._wake_waiters()


def _generate_and_finish(worker: Worker, jobs: list[_Job]) -> tuple[list[Images], Outcomes | None]:
    """On the worker thread: generate, then finish here on the CPU, where a hand-off would
    only add a thread switch (so the outcomes ride back with the batch: one event-loop
    wake-up per batch); an accelerator's worker leaves finishing to the pool (None)."""
    results = _generate_checked(worker.backend, [job.request for job in jobs])
    if worker.hands_off_finishing:
        return results, None
    return results, _finish(jobs, results)


def _generate_checked(backend: Backend, batch: list[GenerationRequest]) -> list[Images]:
    """Call the backend on its thread; on failure free its memory there before re-raising."""
    try:
        results = backend.generate(batch)
        if len(results) != len(batch) or any(
            len(images) != request.n for images, request in zip(results, batch, strict=True)
        ):
            raise RuntimeError(f"backend {backend.name} returned the wrong number of images")
        return results
    except BaseException:
        backend.release_memory()
        raise


def _finish(jobs: list[_Job], results: list[Images]) -> Outcomes:
    """Run each request's finish step (off the loop); a failure fails that request only."""
    outcomes: Outcomes = []
    for job, images in zip(jobs, results, strict=True):
        try:
            outcomes.append((job, job.finish(images), None))
        except Exception as exc:
            log.error("finishing a request failed", exc_info=exc)
            outcomes.append((job, None, GenerationFailed(f"finishing failed: {exc}")))
    return outcomes


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _unchanged(images: Images) -> Images:
    return images


def _outcomes_of(finishing: asyncio.Future[list[Outcomes]], jobs: list[_Job]) -> Outcomes:
    """What the finishing pool made of `jobs`, or the error all of them get if it made
    nothing (shut down, or a failure `_finish` does not catch)."""
    if finishing.cancelled():
        error: EngineError = EngineStopped("the server is shutting down")
    elif (exc := finishing.exception()) is not None:
        log.error("finishing a batch failed", exc_info=exc)
        error = GenerationFailed(f"finishing failed: {exc}")
    else:
        return [outcome for part in finishing.result() for outcome in part]
    return [(job, None, error) for job in jobs]


def _client_error(exc: Exception, worker: Worker) -> EngineError:
    """What the requests of a failed batch are told; the traceback goes to the log only."""
    if isinstance(exc, AdapterGone):
        return AdapterRemoved(str(exc))
    if isinstance(exc, BackendOutOfMemory):
        log.warning(
            "worker %d (%s) ran out of memory: %s", worker.index, worker.backend.device, exc
        )
        return OutOfMemory("the device ran out of memory for this batch; retry later")
    log.error("worker %d batch failed", worker.index, exc_info=exc)
    return GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}")


def _images(batch: list[_Job]) -> int:
    return sum(job.request.n for job in batch)


def _any_live(batch: list[_Job]) -> bool:
    """Whether anyone still waits for the batch (all timed out or gone: stop collecting)."""
    return any(not job.future.done() for job in batch)


def _fail(job: _Job, error: EngineError) -> None:
    if not job.future.done():
        job.future.set_exception(error)
