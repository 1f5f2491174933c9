"""client-go's reflector for any collection: list, then watch from the list's version.

The operator's informer feeds its child cache with it; the gateway its table of models and
their endpoints.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from tti_kube.client import ApiError, KubeClient

Obj = dict[str, Any]
#: Seconds before a watch that failed is listed again (doubling up to the last).
RETRY_DELAYS_S = (1.0, 2.0, 4.0, 8.0, 15.0)

logger = logging.getLogger(__name__)


class Sink(Protocol):
    """What a list+watch feeds: each complete listing (it replaces what came before), then
    one event at a time (ADDED, MODIFIED, DELETED)."""

    def listed(self, items: list[Obj]) -> None: ...

    def event(self, event_type: str, obj: Obj) -> None: ...


async def list_and_watch(
    client: KubeClient,
    path: str,
    params: Mapping[str, str],
    sink: Sink,
    on_listed: Callable[[], None] = lambda: None,
) -> None:
    """List, then watch from the list's version, resuming after each server-side timeout;
    list again after "410 Gone" or any failure (backing off). Runs until cancelled."""
    failures = 0
    while True:
        try:
            version = await list_into(client, path, params, sink)
            on_listed()
            failures = 0
            while version:  # resumed after each server-side timeout; "" means relist
                version = await _follow(client, path, params, version, sink)
        except Exception as error:  # a watch must outlive anything one response does
            delay = RETRY_DELAYS_S[min(failures, len(RETRY_DELAYS_S) - 1)]
            failures += 1
            logger.warning(
                "watching %s: %s; listing again in %.0f s",
                path,
                error if isinstance(error, ApiError) else repr(error),
                delay,
            )
            await asyncio.sleep(delay)


async def list_into(client: KubeClient, path: str, params: Mapping[str, str], sink: Sink) -> str:
    """List the collection into `sink`; returns the version to watch from."""
    listing = await client.list(path, dict(params))
    sink.listed(listing.get("items") or [])
    return str(listing.get("metadata", {}).get("resourceVersion", ""))


async def _follow(
    client: KubeClient, path: str, params: Mapping[str, str], version: str, sink: Sink
) -> str:
    """Watch from `version`; returns where to resume, or "" when a relist is needed."""
    async for event in client.watch(path, {**params, "resourceVersion": version}):
        event_type, obj = event.get("type"), event.get("object") or {}
        if event_type == "ERROR":
            if obj.get("code") == 410:  # too old: the history is gone, list again
                return ""
            raise ApiError(int(obj.get("code") or 500), str(obj.get("message", obj)))
        version = str(obj.get("metadata", {}).get("resourceVersion") or version)
        if event_type != "BOOKMARK":
            sink.event(str(event_type), obj)
    return version
