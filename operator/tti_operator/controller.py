"""The operator's core, wired: a store of models, the children's informer, one keyed work
queue and its workers running the `Reconciler` (controller-runtime's Controller, for asyncio),
and the `AutoscaleLoop` beside them, which shares the store and the cache and leaves its
decisions for the reconciler to publish.

Every trigger only enqueues the model's key: a model event from kopf (when it says more
than the echo of a status patch), a child event from the informer (after a short delay, so
a burst of them is one reconcile), a failed reconcile (with backoff), a reconcile that asks
to look again. The queue hands each key to one worker at a time.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from tti_kube.client import ApiError, KubeClient
from tti_operator.autoscale_loop import AutoscaleLoop, MetricsUrl
from tti_operator.builders import desired_children
from tti_operator.cache import WeightsCache
from tti_operator.informer import ChildCache, Informer, Key
from tti_operator.kinds import CHILD_KINDS, ChildKind
from tti_operator.reconciler import (
    Build,
    EventPoster,
    EventSink,
    ModelRecord,
    ModelStore,
    Reconciler,
    Shared,
)
from tti_operator.settings import OperatorSettings
from tti_operator.workqueue import Backoff, WorkQueue, work

#: Retries of a failed reconcile: after 1 s, doubling up to every 30 s.
RETRY_BACKOFF = Backoff(base_s=1.0, max_s=30.0)

logger = logging.getLogger(__name__)


class Controller:
    def __init__(
        self,
        settings: OperatorSettings,
        client: KubeClient,
        event: EventSink | None = None,
        kinds: Iterable[ChildKind] = CHILD_KINDS,
        build: Build = desired_children,
        backoff: Backoff = RETRY_BACKOFF,
        metrics_url: MetricsUrl | None = None,
    ) -> None:
        self.settings = settings
        self.client = client
        self.kinds = tuple(kinds)
        # Each part is built from those above it: nothing refers to one not built yet.
        self.store = ModelStore()
        self.queue: WorkQueue[Key] = WorkQueue(backoff)
        self.cache = ChildCache(self.child_changed, self.kinds)
        self.informer = Informer(client, settings.namespaces, self.cache, self.kinds)
        self.event: EventSink = event or EventPoster(client, settings.field_manager)
        self.weights = WeightsCache(client, settings, self.child_changed)
        shared = Shared(settings, client, self.store, self.cache, self.event)
        self.autoscaler = AutoscaleLoop(shared, self.queue.add, metrics_url)
        self.reconciler = Reconciler(
            shared, self.kinds, build, self.autoscaler.status, self.weights
        )
        self._workers: list[asyncio.Task[None]] = []

    # The triggers.

    def model_changed(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """An event of a model (`event_type` None: kopf's listing at start)."""
        record = ModelRecord.from_body(body)
        if self.store.observe(event_type, record):
            self.queue.add(record.key)

    def child_changed(self, key: Key) -> None:
        # Children change in bursts (a rollout is a dozen events): one reconcile after the
        # burst instead of one per event keeps the API server unloaded.
        self.queue.add_after(key, self.settings.status_delay_s)

    # The watches and the workers.

    def watch(self) -> None:
        """Start the watches of the children and of the model cache (idempotent: kopf logs
        in again after a 401, and each login calls this)."""
        self.informer.start()
        self.weights.start(self.settings.namespaces)

    def start(self) -> None:
        """Start the workers (idempotent); the informer starts apart, once connected."""
        if not self._workers:
            self._workers = [
                asyncio.create_task(
                    work(self.queue, self.reconciler.reconcile, self._failed), name=f"worker {n}"
                )
                for n in range(self.settings.concurrent_reconciles)
            ]
            self._workers.append(asyncio.create_task(self.autoscaler.run(), name="autoscaler"))

    def _failed(self, key: Key, error: Exception, delay_s: float) -> None:
        namespace, name = key
        if isinstance(error, ApiError):  # the API server's answer says it all
            message = "could not reconcile %s/%s: %s; retrying in %.0f s"
            logger.warning(message, namespace, name, error, delay_s)
        else:
            message = "reconciling %s/%s failed, retrying in %.0f s: %r"
            logger.error(message, namespace, name, delay_s, error, exc_info=error)

    async def close(self) -> None:
        """Operator shutdown: stop the workers and watches, close the connections."""
        self.queue.shut_down()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []
        await self.informer.close()
        await self.weights.close()
        await self.client.close()
