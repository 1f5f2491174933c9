"""The gateway's client to the model pods: keep-alive HTTP/1.1 connections, pooled per pod.

Every forwarded request pays for this client, so it is a thin layer on asyncio's transports
and httptools' parser (the one uvicorn serves with): the request goes out in one write, the
answer's head is parsed once, and its body is handed on in the pieces it arrives in, reading
from the pod paused while the gateway's client is slower than the pod. A general client
(aiohttp) spent most of the gateway's CPU per request on what a proxy never needs.

A connection that the pod closed while it sat idle is noticed on reuse, before any answer
arrived: the request then goes once more on a new connection to the same pod.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from typing import cast
from urllib.parse import urlsplit

import httptools

#: Bytes of answer held for a slow client before reading from the pod pauses.
HIGH_WATER = 256 * 1024


class Unreachable(Exception):
    """No connection to the pod could be made: nothing was sent."""


class UpstreamError(Exception):
    """The pod broke off or answered something that is not HTTP."""


class _Stale(UpstreamError):
    """A reused connection closed before any answer: the pod never saw the request."""


class Connection(asyncio.Protocol):
    """One connection to a pod, carrying one exchange at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.headers: list[tuple[bytes, bytes]] = []
        self.head: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.chunks: deque[bytes] = deque()
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.answered = False  # any byte of the answer arrived
        self.error: UpstreamError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._paused = False

    # -- the exchange --------------------------------------------------------------------

    def send(self, request: bytes) -> None:
        assert self.transport is not None
        self._reset()
        self.transport.write(request)

    async def body(self) -> AsyncIterator[tuple[bytes, bool]]:
        """The answer's body as it arrives: (bytes, more to come)."""
        while True:
            if self.chunks:
                data = b"".join(self.chunks)
                self.chunks.clear()
                self.buffered = 0
                if self._paused and self.transport is not None:
                    self._paused = False
                    self.transport.resume_reading()
                last = self.complete  # as of these bytes: more may arrive during the yield
                yield data, not last
                if last:
                    return
            elif self.complete:
                yield b"", False
                return
            elif self.error is not None:
                raise self.error
            else:
                self._waiter = asyncio.get_running_loop().create_future()
                await self._waiter

    @property
    def reusable(self) -> bool:
        return self.complete and self.keep_alive and not self.closed

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self.closed = True

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.answered = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"not an HTTP answer ({exc})"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.complete:
            why = f" ({exc})" if exc else ""
            error = UpstreamError if self.answered else _Stale
            self._fail(error(f"the pod closed the connection before the answer ended{why}"))

    # -- httptools callbacks --------------------------------------------------------------

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if not self.head.done():
            self.head.set_result(None)

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)
        self.buffered += len(body)
        if self.buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        self.complete = True
        # Only known while the parser is inside the message.
        self.keep_alive = self.parser.should_keep_alive()
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        self.error = error
        if not self.head.done():
            self.head.set_exception(error)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Pool:
    """Idle connections per pod (`http://HOST:PORT`), newest first."""

    def __init__(self, connect_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self._idle: dict[str, list[Connection]] = {}

    async def send(self, url: str, request: bytes) -> Connection:
        """`request` sent to `url`; the connection once the answer's head is in. Give it
        back with `release` when its body has been read (or abandoned).

        Raises Unreachable when no connection could be made, UpstreamError when the pod
        broke off before its head; TimeoutError is the caller's.
        """
        while idle := self._idle.get(url):
            connection = idle.pop()
            if connection.closed:
                continue
            try:
                return await self._answered(connection, request)
            except _Stale:
                continue  # closed by the pod while idle; try the next, or a new one
        return await self._answered(await self._connect(url), request)

    def release(self, url: str, connection: Connection) -> None:
        """Back to the idle ones when its answer was read whole and the pod keeps it open."""
        if connection.reusable:
            self._idle.setdefault(url, []).append(connection)
        else:
            connection.close()

    @staticmethod
    async def _answered(connection: Connection, request: bytes) -> Connection:
        connection.send(request)
        try:
            await connection.head
        except BaseException:
            connection.close()
            raise
        return connection

    async def _connect(self, url: str) -> Connection:
        parts = urlsplit(url)
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.connect_timeout):
                _transport, connection = await loop.create_connection(
                    Connection, parts.hostname or "", parts.port or 80
                )
        except (OSError, TimeoutError) as exc:
            raise Unreachable(str(exc) or type(exc).__name__) from None
        return connection

    def close(self) -> None:
        for idle in self._idle.values():
            for connection in idle:
                connection.close()
        self._idle.clear()
