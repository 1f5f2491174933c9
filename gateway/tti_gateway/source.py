"""A static endpoint source: the URLs from the settings, their readiness probed on `/readyz`.

For a gateway without a cluster (tests, a single host); in a cluster `ClusterSource`
(cluster.py) feeds the same table.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from tti_gateway.endpoints import EndpointTable, Key

log = logging.getLogger(__name__)


class StaticSource:
    def __init__(
        self,
        table: EndpointTable,
        models: dict[str, list[str]],
        session: aiohttp.ClientSession,
        interval: float,
    ) -> None:
        self.table = table
        self.session = session
        self.interval = interval
        for name, urls in models.items():
            table.set_model(("", name), urls)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await self.probe_all()
            self.table.synced = True
            await asyncio.sleep(self.interval)

    async def probe_all(self) -> None:
        probes = [
            self._probe(key, url)
            for key, model in self.table.models.items()
            for url in model.endpoints
        ]
        await asyncio.gather(*probes)

    async def _probe(self, key: Key, url: str) -> None:
        timeout = aiohttp.ClientTimeout(total=max(0.5, self.interval))
        try:
            async with self.session.get(url + "/readyz", timeout=timeout) as response:
                ready = response.status == 200
        except (aiohttp.ClientError, TimeoutError):
            ready = False
        self.table.set_ready(key, url, ready)
