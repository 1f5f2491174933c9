"""The gateway's client to the pods, against real TCP peers that misbehave on cue.

A `tti-server` cannot be told to close a kept-alive connection at the worst moment, to
answer in chunks or with garbage, or to send megabytes to a slow reader; these peers can
(each a real asyncio server on loopback, speaking HTTP/1.1 by hand). The gateway with real
servers behind it is in test_gateway_process.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from tti_gateway.upstream import HIGH_WATER, Pool, Unreachable, UpstreamError

REQUEST = b"POST /x HTTP/1.1\r\nhost: pod\r\ncontent-length: 2\r\n\r\n{}"
Peer = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


def answer(body: bytes, *headers: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n" % len(body)
    return head + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


async def read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.startswith(b"content-length")
    )
    return head + await reader.readexactly(length)


@asynccontextmanager
async def peer(behaviour: Peer) -> AsyncIterator[tuple[str, list[int]]]:
    """A server on loopback: `behaviour(reader, writer, connection_number)` per connection;
    yields its URL and the number of connections it accepted so far (a list of one)."""
    accepted = [0]

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted[0] += 1
        try:
            await behaviour(reader, writer, accepted[0])
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", accepted


async def body_of(pool: Pool, url: str) -> tuple[int, bytes]:
    connection = await pool.send(url, REQUEST)
    try:
        return connection.status, b"".join([chunk async for chunk, _more in connection.body()])
    finally:
        pool.release(url, connection)


def test_connections_are_kept_alive_and_reused() -> None:
    async def keep_answering(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int
    ) -> None:
        while True:
            await read_request(reader)
            writer.write(answer(b"image"))

    async def run() -> None:
        async with peer(keep_answering) as (url, accepted):
            pool = Pool(connect_timeout=2)
            for _ in range(3):
                assert await body_of(pool, url) == (200, b"image")
            assert accepted == [1]
            pool.close()

    asyncio.run(run())


def test_a_connection_the_pod_closed_while_idle_is_replaced_without_an_error() -> None:
    """The race every keep-alive client meets: the pod's idle timeout closes the connection
    just as the next request goes out on it. The pod never saw that request, so it is sent
    again on a new connection."""

    async def one_answer_per_connection(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
    ) -> None:
        await read_request(reader)
        writer.write(answer(b"answer %d" % n))
        await writer.drain()
        await read_request(reader)  # the next request arrives: close without answering

    async def run() -> None:
        async with peer(one_answer_per_connection) as (url, accepted):
            pool = Pool(connect_timeout=2)
            assert await body_of(pool, url) == (200, b"answer 1")
            assert await body_of(pool, url) == (200, b"answer 2")
            assert accepted == [2]
            pool.close()

    asyncio.run(run())


def test_a_chunked_answer_arrives_whole_and_unchunked() -> None:
    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for piece in (b"first ", b"second ", b"third"):
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            await asyncio.sleep(0.01)
        writer.write(b"0\r\n\r\n")

    async def run() -> None:
        async with peer(chunked) as (url, _):
            assert await body_of(Pool(connect_timeout=2), url) == (200, b"first second third")

    asyncio.run(run())


def test_a_large_answer_to_a_slow_reader_pauses_the_pod_instead_of_piling_up() -> None:
    size = 16 * HIGH_WATER
    image = bytes(range(256)) * (size // 256)

    async def large(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int) -> None:
        await read_request(reader)
        writer.write(answer(image))
        await writer.drain()

    async def run() -> None:
        async with peer(large) as (url, _):
            pool = Pool(connect_timeout=2)
            received, most_held = [], 0
            connection = await pool.send(url, REQUEST)
            async for chunk, _more in connection.body():
                received.append(chunk)
                await asyncio.sleep(0.005)  # a slow client
                most_held = max(most_held, connection.buffered)
            pool.release(url, connection)
            assert b"".join(received) == image
            # Held at most the high-water mark plus what one read brings in.
            assert most_held < HIGH_WATER + 512 * 1024

    asyncio.run(run())


@pytest.mark.parametrize(
    ("behaviour", "error", "message"),
    [
        ("garbage", UpstreamError, "not an HTTP answer"),
        ("cut", UpstreamError, "closed the connection before the answer ended"),
        ("silent", UpstreamError, "closed the connection before the answer ended"),
    ],
)
def test_a_pod_that_breaks_off_is_an_error_naming_why(
    behaviour: str, error: type[Exception], message: str
) -> None:
    async def misbehave(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _n: int
    ) -> None:
        await read_request(reader)
        if behaviour == "garbage":
            writer.write(b"SMTP READY\r\n\r\n")
        elif behaviour == "cut":
            writer.write(answer(b"0123456789")[:-4])
        await writer.drain()

    async def run() -> None:
        async with peer(misbehave) as (url, _):
            with pytest.raises(error, match=message):
                await body_of(Pool(connect_timeout=2), url)

    asyncio.run(run())


def test_a_pod_that_is_not_there_is_unreachable() -> None:
    async def run() -> None:
        async with peer(read_request_then_close) as (url, _):
            pass  # the server is closed: its port refuses
        with pytest.raises(Unreachable):
            await body_of(Pool(connect_timeout=2), url)

    asyncio.run(run())


async def read_request_then_close(
    reader: asyncio.StreamReader, _writer: asyncio.StreamWriter, _n: int
) -> None:
    await read_request(reader)
