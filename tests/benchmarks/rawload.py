"""The benchmarks' load generator on a machine without `wrk`: keep-alive connections speaking
raw HTTP/1.1 on asyncio streams (an HTTP client library would be the bottleneck), in a
process of its own so that it can be pinned to a core.

    python rawload.py URL PATH BODY SECONDS CONNECTIONS

posts the JSON `BODY` to `URL` + `PATH` over `CONNECTIONS` connections, one request after
another on each, for `SECONDS`; prints `{"rate", "p50_ms", "ok", "bad"}` as JSON.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import sys
import time


async def drive(
    url: str, path: str, body: str, duration: float, connections: int
) -> dict[str, float]:
    host, port = url.removeprefix("http://").split(":")
    payload = body.encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    latencies: list[float] = []
    bad = 0
    deadline = time.monotonic() + duration

    async def one_connection() -> None:
        nonlocal bad
        reader, writer = await asyncio.open_connection(host, int(port))
        while time.monotonic() < deadline:
            sent = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            await read_body(reader)
            latencies.append(time.perf_counter() - sent)
            bad += b" 200 " not in status_line
        writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    seconds = time.monotonic() - started
    return {
        "rate": len(latencies) / seconds,
        "p50_ms": statistics.median(latencies) * 1e3 if latencies else 0.0,
        "ok": len(latencies) - bad,
        "bad": bad,
    }


async def read_body(reader: asyncio.StreamReader) -> None:
    """The rest of an answer after its status line: headers, then a sized or chunked body."""
    length, chunked = 0, False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        lowered = line.lower()
        if lowered.startswith(b"content-length:"):
            length = int(line.split(b":")[1])
        chunked |= lowered.startswith(b"transfer-encoding:") and b"chunked" in lowered
    if not chunked:
        await reader.readexactly(length)
        return
    while (size := int((await reader.readline()).strip(), 16)) > 0:
        await reader.readexactly(size + 2)
    await reader.readline()


def command(url: str, path: str, body: str, duration: float, connections: int) -> list[str]:
    """The command line that runs this generator with the same Python."""
    return [sys.executable, __file__, url, path, body, str(duration), str(connections)]


if __name__ == "__main__":
    url, path, body, duration, connections = sys.argv[1:6]
    print(json.dumps(asyncio.run(drive(url, path, body, float(duration), int(connections)))))
