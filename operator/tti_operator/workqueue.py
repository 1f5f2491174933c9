"""A keyed work queue in the shape of client-go's `workqueue`, for asyncio.

Every trigger of the operator only adds a model's key here; workers take keys out and
reconcile them. The queue promises what makes that safe and cheap:

- **dedupe**: a key added any number of times before a worker takes it is handed out once;
- **one worker per key**: a key added while it is being processed is handed out again
  only after `done`, so two workers never reconcile one model at once;
- **delay**: `add_after` holds a key back (a burst of child events becomes one status
  refresh), keeping only the earliest time asked for; an immediate `add` supersedes it;
- **rate-limited retries**: `add_rate_limited` delays a key by a capped exponential
  backoff per key, and `forget` resets it once the key succeeds.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Per-key exponential backoff: `base_s` doubling with each failure, at most `max_s`."""

    base_s: float = 1.0
    max_s: float = 30.0

    def delay_s(self, failures: int) -> float:
        return min(self.base_s * 2.0 ** min(failures, 62), self.max_s)


class WorkQueue(Generic[K]):
    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff()
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._dirty: set[K] = set()  # added and not yet handed out
        self._processing: set[K] = set()
        self._waiting: dict[K, tuple[float, asyncio.TimerHandle]] = {}
        self._failures: dict[K, int] = {}
        self._shutting_down = False

    def __len__(self) -> int:
        """Keys ready to be handed out."""
        return self._ready.qsize()

    def add(self, key: K) -> None:
        """Reconcile `key` as soon as a worker is free (and it is not being processed)."""
        if self._shutting_down:
            return
        self._cancel_waiting(key)
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._ready.put_nowait(key)

    def add_after(self, key: K, delay_s: float) -> None:
        """Add `key` after `delay_s`; of several delays asked for, the earliest wins."""
        if self._shutting_down:
            return
        if delay_s <= 0:
            self.add(key)
            return
        if key in self._dirty:
            return  # it runs (again) soon anyway, and reads the latest state when it does
        loop = asyncio.get_running_loop()
        ready_at = loop.time() + delay_s
        if (held := self._waiting.get(key)) is not None:
            if held[0] <= ready_at:
                return
            held[1].cancel()
        self._waiting[key] = (ready_at, loop.call_at(ready_at, self._ripe, key))

    def add_rate_limited(self, key: K) -> float:
        """Add `key` after its backoff (longer with each failure); returns the delay."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay_s = self.backoff.delay_s(failures)
        self.add_after(key, delay_s)
        return delay_s

    def forget(self, key: K) -> None:
        """`key` succeeded: its next failure starts the backoff afresh."""
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> K:
        """The next key to process; call `done(key)` when finished with it."""
        key = await self._ready.get()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        """Processing `key` is over; if it was added meanwhile, it is handed out again."""
        self._processing.discard(key)
        if key in self._dirty:
            self._ready.put_nowait(key)

    def busy(self) -> bool:
        """Keys ready or being processed (keys waiting for their delay aside)."""
        return not self._ready.empty() or bool(self._processing)

    def idle(self) -> bool:
        """Nothing ready, being processed, or waiting for its delay."""
        return not self.busy() and not self._waiting

    def shut_down(self) -> None:
        """Accept no more keys and drop the delayed ones (the workers are cancelled apart)."""
        self._shutting_down = True
        for _, timer in self._waiting.values():
            timer.cancel()
        self._waiting.clear()

    def _ripe(self, key: K) -> None:
        self._waiting.pop(key, None)
        self.add(key)

    def _cancel_waiting(self, key: K) -> None:
        if (held := self._waiting.pop(key, None)) is not None:
            held[1].cancel()


#: Reconciles one key; returns seconds until it should be looked at again, or None.
Reconcile = Callable[[K], Awaitable[float | None]]
#: Told of a failed reconcile: (key, error, seconds until the retry).
OnFailure = Callable[[K, Exception, float], None]


def log_failure(key: object, error: Exception, delay_s: float) -> None:
    message = "reconciling %s failed, retrying in %.1f s: %r"
    logger.error(message, key, delay_s, error, exc_info=error)


async def work(
    queue: WorkQueue[K], reconcile: Reconcile[K], on_failure: OnFailure[K] = log_failure
) -> None:
    """One worker: take a key, reconcile it, requeue it as it asks or after a failure.

    Runs until cancelled. Any exception but cancellation is a failure to retry: a model
    must never be left unreconciled because something unexpected happened once.
    """
    while True:
        key = await queue.get()
        try:
            again_s = await reconcile(key)
        except Exception as error:
            on_failure(key, error, queue.add_rate_limited(key))
        else:
            queue.forget(key)
            if again_s is not None:
                queue.add_after(key, again_s)
        finally:
            queue.done(key)
