"""The engine: a bounded queue, dynamic batching and one worker thread per backend.

Requests wait in one FIFO queue. Each worker is an asyncio task that owns one
backend and one thread: when it is free it takes the oldest request, gathers
compatible ones (same `BatchKey`) for up to `batch_wait` seconds or until the
batch holds `max_batch_size` images, and runs them as one `backend.generate`
call on its thread. Because only free workers take work, a request always goes
to the least-loaded worker and never waits behind a busy one while another idles.

A batch that raises fails only its own requests; the worker releases device
memory and keeps serving. Nothing here knows about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from tti_server.backends.base import Backend, BackendOutOfMemory, GenerationRequest

log = logging.getLogger(__name__)


class EngineError(Exception):
    """A request the engine could not serve; the message is safe to show to clients."""


class QueueFull(EngineError):
    """Too many requests are waiting; try again shortly."""


class GenerationTimeout(EngineError):
    """The request did not finish within the request timeout."""


class OutOfMemory(EngineError):
    """The device ran out of memory for the batch this request was in."""


class GenerationFailed(EngineError):
    """The backend raised while generating the batch this request was in."""


class EngineStopped(EngineError):
    """The engine is shutting down."""


@dataclass
class EngineStats:
    """Counters the metrics endpoint reads."""

    images_generated: int = 0
    batches: int = 0
    failed_batches: int = 0


@dataclass(eq=False)
class _Job:
    request: GenerationRequest
    future: asyncio.Future[list[Image.Image]]


@dataclass(eq=False)
class Worker:
    """One backend and the one thread that may call it."""

    index: int
    backend: Backend
    executor: ThreadPoolExecutor = field(init=False)
    busy: bool = False
    batches: int = 0

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(1, thread_name_prefix=f"tti-worker-{self.index}")


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
        self._arrival = asyncio.Condition()
        self._tasks: list[asyncio.Task[None]] = []
        self._stopped = False

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
        while self._pending:
            _fail(self._pending.popleft(), EngineStopped("the server is shutting down"))
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in self.workers:
            worker.executor.shutdown(wait=False, cancel_futures=True)

    async def generate(self, request: GenerationRequest) -> list[Image.Image]:
        """Queue `request` and wait for its `n` images (raises an `EngineError` subclass)."""
        if self._stopped:
            raise EngineStopped("the server is shutting down")
        if len(self._pending) >= self.max_queue:
            raise QueueFull(f"{len(self._pending)} requests are already waiting; retry shortly")
        job = _Job(request, asyncio.get_running_loop().create_future())
        async with self._arrival:
            self._pending.append(job)
            self._arrival.notify_all()
        try:
            return await asyncio.wait_for(asyncio.shield(job.future), self.request_timeout)
        except TimeoutError:
            raise GenerationTimeout(
                f"the request did not finish within {self.request_timeout:g} s"
            ) from None
        finally:
            self._forget(job)

    async def run_on_each_worker(self, request: GenerationRequest) -> None:
        """Run `request` once on every worker, bypassing the queue (the warm-up)."""
        loop = asyncio.get_running_loop()
        await asyncio.gather(
            *(
                loop.run_in_executor(w.executor, _generate_checked, w.backend, [request])
                for w in self.workers
            )
        )

    def _forget(self, job: _Job) -> None:
        """A request that gave up (timeout, disconnect) leaves the queue."""
        if not job.future.done():
            job.future.cancel()
        with contextlib.suppress(ValueError):
            self._pending.remove(job)

    async def _serve(self, worker: Worker) -> None:
        while True:
            batch = await self._next_batch()
            worker.busy = True
            try:
                await self._run(worker, batch)
            finally:
                worker.busy = False

    async def _next_batch(self) -> list[_Job]:
        """Wait for the oldest live request, then gather compatible ones into its batch."""
        async with self._arrival:
            await self._arrival.wait_for(self._has_live_job)
            first = self._pending.popleft()
        batch = [first]
        if self.max_batch_size > 1:
            await self._fill(batch)
        return batch

    def _has_live_job(self) -> bool:
        while self._pending and self._pending[0].future.done():
            self._pending.popleft()
        return bool(self._pending)

    async def _fill(self, batch: list[_Job]) -> None:
        """Add compatible requests until the batch is full or the batch window closes."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait
        while True:
            self._take_compatible(batch)
            remaining = deadline - loop.time()
            if _images(batch) >= self.max_batch_size or remaining <= 0:
                return
            async with self._arrival:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._arrival.wait(), remaining)

    def _take_compatible(self, batch: list[_Job]) -> None:
        """Move waiting requests with the batch's key into it, oldest first, while they fit."""
        key = batch[0].request.key
        room = self.max_batch_size - _images(batch)
        for job in list(self._pending):
            if room <= 0:
                return
            if job.request.key == key and job.request.n <= room and not job.future.done():
                self._pending.remove(job)
                batch.append(job)
                room -= job.request.n

    async def _run(self, worker: Worker, batch: list[_Job]) -> None:
        """Run one batch on the worker's thread and hand each request its own images."""
        live = [job for job in batch if not job.future.done()]
        if not live:
            return
        requests = [job.request for job in live]
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(
                worker.executor, _generate_checked, worker.backend, requests
            )
        except Exception as exc:
            self.stats.failed_batches += 1
            error = _client_error(exc, worker)
            for job in live:
                _fail(job, error)
            return
        worker.batches += 1
        self.stats.batches += 1
        self.stats.images_generated += sum(len(images) for images in results)
        for job, images in zip(live, results, strict=True):
            if not job.future.done():
                job.future.set_result(images)


def _generate_checked(backend: Backend, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
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


def _client_error(exc: Exception, worker: Worker) -> EngineError:
    """What the requests of a failed batch are told; the traceback goes to the log only."""
    if isinstance(exc, BackendOutOfMemory):
        log.warning(
            "worker %d (%s) ran out of memory: %s", worker.index, worker.backend.device, exc
        )
        return OutOfMemory("the device ran out of memory for this batch; retry later")
    log.error("worker %d batch failed", worker.index, exc_info=exc)
    return GenerationFailed(f"generation failed: {type(exc).__name__}: {exc}")


def _images(batch: list[_Job]) -> int:
    return sum(job.request.n for job in batch)


def _fail(job: _Job, error: EngineError) -> None:
    if not job.future.done():
        job.future.set_exception(error)
