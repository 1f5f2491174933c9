"""Hostile HTTP clients on raw sockets, for the limits of tti-server and tti-gateway.

Each is what `httpx` will not do: a head that never ends, a header of 64 MiB, a body a byte
at a time, a connection that sends nothing. `SLOW_CLIENTS` lists the slow ones as data, so
that the server's and the gateway's tests run the same cases against their own process.

Nothing here times a server: a slow client gives up after its `patience` (the configured
timeout plus a generous slack) and reports what it got, and a test asserts only that the
connection was answered or closed by then. `assert_huge_header_refused` and
`assert_slow_client_cut_off` are those checks, the same for either process.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from support.server import ServerProcess

#: Seconds past a configured timeout that a slow client waits before it calls the server stuck.
SLACK = 10.0


@dataclass
class Answer:
    """What came back on a connection before it closed (or before the client gave up)."""

    data: bytes
    closed: bool  # the server closed the connection

    @property
    def status(self) -> int | None:
        if not self.data.startswith(b"HTTP/1."):
            return None
        return int(self.data.split(b" ", 2)[1])

    def envelope(self) -> Any:
        """The body after the head, as JSON (a refusal's error envelope)."""
        return json.loads(self.data.split(b"\r\n\r\n", 1)[1])

    def header(self, name: str) -> str | None:
        head = self.data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        for line in head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    return socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 80), timeout=30)


def read_until_closed(sock: socket.socket, patience: float) -> Answer:
    """Everything the server sends until it closes the connection, or `patience` runs out."""
    deadline = time.monotonic() + patience
    data = b""
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return Answer(data, closed=True)
        if not chunk:
            return Answer(data, closed=True)
        data += chunk
    return Answer(data, closed=False)


def trickle(sock: socket.socket, data: bytes, patience: float, every: float = 0.2) -> Answer:
    """Send `data` a byte every `every` seconds (then nothing) until the server answers or
    closes, or `patience` runs out."""
    deadline = time.monotonic() + patience
    for byte in data:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            break
        sock.settimeout(every)
        try:
            first = sock.recv(65536)
        except TimeoutError:
            if time.monotonic() > deadline:
                return Answer(b"", closed=False)
            continue
        except ConnectionResetError:
            return Answer(b"", closed=True)
        if not first:
            return Answer(b"", closed=True)
        rest = read_until_closed(sock, max(0.0, deadline - time.monotonic()) + 1)
        return Answer(first + rest.data, rest.closed)
    return read_until_closed(sock, max(0.0, deadline - time.monotonic()))


# -- the slow clients ------------------------------------------------------------------------


def timeout_flags(seconds: float) -> list[str]:
    """The command-line flags that set each of a process's client timeouts to `seconds`."""
    timeouts = ("--header-timeout", "--body-timeout", "--keepalive-timeout")
    return [arg for flag in timeouts for arg in (flag, str(seconds))]


#: (base URL, patience, header lines to add, such as a token) -> what it got
SlowClient = Callable[[str, float, bytes], Answer]


def sends_nothing(url: str, patience: float, _extra: bytes = b"") -> Answer:
    with connect(url) as sock:
        return read_until_closed(sock, patience)


def head_a_byte_at_a_time(url: str, patience: float, extra: bytes = b"") -> Answer:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + extra
    head += b"X-Slow: " + b"s" * 10_000 + b"\r\n\r\n"
    with connect(url) as sock:
        return trickle(sock, head, patience)


def head_that_stops(url: str, patience: float, extra: bytes = b"") -> Answer:
    with connect(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + extra)
        return read_until_closed(sock, patience)


def body_that_stops(url: str, patience: float, extra: bytes = b"") -> Answer:
    with connect(url) as sock:
        sock.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n" + extra
            + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\":"
        )  # fmt: skip
        return read_until_closed(sock, patience)


def body_a_byte_at_a_time(url: str, patience: float, extra: bytes = b"") -> Answer:
    body = b'{"model": "m", "prompt": "' + b"p" * 10_000 + b'"}'
    with connect(url) as sock:
        sock.sendall(
            b"POST /v1/images/generations HTTP/1.1\r\nHost: x\r\n" + extra
            + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )  # fmt: skip
        return trickle(sock, body, patience)


def idle_after_a_request(url: str, patience: float, extra: bytes = b"") -> Answer:
    """One whole request, its answer read, then nothing: an idle kept-alive connection."""
    with connect(url) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
        sock.settimeout(30)
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first[:100]
        return read_until_closed(sock, patience)


#: name: (client, the status it should get: None where the connection is closed unanswered).
SLOW_CLIENTS: dict[str, tuple[SlowClient, int | None]] = {
    "sends nothing": (sends_nothing, None),
    "a head that stops": (head_that_stops, 408),
    "a head a byte at a time": (head_a_byte_at_a_time, 408),
    "a body that stops": (body_that_stops, 408),
    "a body a byte at a time": (body_a_byte_at_a_time, 408),
    "idle after a request": (idle_after_a_request, None),
}


def assert_slow_client_cut_off(url: str, case: str, timeout: float) -> None:
    """The slow client `case` of `SLOW_CLIENTS` is answered or cut off (as that case
    expects) by the process at `url`, whose client timeouts are `timeout`."""
    client, status = SLOW_CLIENTS[case]
    answer = client(url, timeout + SLACK, b"")
    assert answer.closed, f"{case}: still open after {timeout + SLACK:g} s"
    assert answer.status == status, answer.data[:200]


# -- large heads -----------------------------------------------------------------------------


@dataclass
class Flood:
    answer: Answer
    sent: int  # bytes of the head written before the server stopped reading


def send_huge_header(url: str, path: str, size: int, head: bytes = b"") -> Flood:
    """A request whose `X-Big` header is `size` bytes, written in pieces while the answer is
    read: a server that reads no further than its limit stops the writing early."""
    sent = 0
    with connect(url) as sock:

        def write() -> None:
            nonlocal sent
            piece = b"a" * 65536
            try:
                sock.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n" + head)
                sock.sendall(b"X-Big: ")
                while sent < size:
                    sock.sendall(piece)
                    sent += len(piece)
                sock.sendall(b"\r\nContent-Length: 2\r\n\r\n{}")
            except OSError:
                pass  # the server closed the connection: what this measures

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        answer = read_until_closed(sock, 120)
        writer.join(30)
    return Flood(answer, sent)


def many_headers_request(path: str, count: int) -> bytes:
    """A POST to `path` with `count` headers of its own and a body of 2 bytes, asking the
    server to close the connection after its answer (for `send_raw`)."""
    start = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
    headers = b"".join(b"X-Header-%d: %d\r\n" % (i, i) for i in range(count))
    return start + headers + b"Content-Length: 2\r\n\r\n{}"


def assert_huge_header_refused(process: ServerProcess, path: str) -> Any:
    """A request to `path` with a 64 MiB header gets 431 and is not read on: the client
    could not write half of it, and the process's peak memory grew by less than 16 MiB.
    Returns the refusal's error envelope."""
    before = peak_rss_mib(process.process.pid)
    flood = send_huge_header(process.url, path, 64 << 20)
    assert flood.answer.status == 431, flood.answer.data[:200]
    assert flood.sent < 32 << 20
    assert peak_rss_mib(process.process.pid) - before < 16
    return flood.answer.envelope()


def send_raw(url: str, request: bytes, patience: float = 30) -> Answer:
    """One request as given, answer read until the connection closes (send `Connection:
    close`) or `patience` runs out."""
    with connect(url) as sock:
        sock.sendall(request)
        return read_until_closed(sock, patience)


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")
