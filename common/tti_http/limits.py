"""Bounds on what an HTTP client may send, and how slowly: uvicorn's httptools protocol with a
limit on the request head and timeouts for the head, the body and an idle kept-alive
connection. tti-server and tti-gateway both serve with it (`limited_protocol`).

uvicorn bounds none of this by itself. httptools' parser (llhttp) hands each header to Python
whole, so a header is held, however large, until its end arrives: a 64 MiB header was read
whole and forwarded. Here the head (request line and headers) is counted as bytes arrive,
*before* they reach the parser, and the parser is fed no further than `max_header_bytes`: one
byte more of an unfinished head is answered 431 and the connection closed, so a connection
never holds more than the limit and one read of the socket. More than `max_headers` headers
are answered 431 before the application sees the request (and so before any authentication
or body is read).

The timeouts (each answered with the connection closed; with 408 where part of a request
arrived, so a client can tell):

- `header_timeout`: from a connection's opening, or the first byte of a later request's head,
  until the head is whole (a client sending a header a byte at a time, or nothing at all);
- `body_timeout`: from the end of a head until its body is whole. A deadline, not an idle
  timer: a client that sends a byte just before every idle timer would run out would hold
  the connection for as long as its declared length lasts. It restarts while the
  application, not the client, is the slow one (reading is paused then);
- `keepalive_timeout`: how long a connection may sit idle between requests (uvicorn's own
  keep-alive timer, set from here).

None of these runs once a request is read while the application answers it: its own
timeouts bound that.
Nothing here costs a timer on a request that arrives in one piece on a kept-alive connection.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol


@dataclass(frozen=True)
class ClientLimits:
    """What one client connection may send, and how slowly (see the module's docstring)."""

    max_header_bytes: int = 32 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 5.0


class Refused(Exception):
    """Raised in a parser callback to answer the request with `status` and close."""

    def __init__(self, status: int, details: str) -> None:
        super().__init__(details)
        self.status = status
        self.details = details


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under `limits`; `port_apps` serves another app on a port
    (the gateway's metrics port). Made per server by `limited_protocol`."""

    limits: ClassVar[ClientLimits] = ClientLimits()
    port_apps: ClassVar[Mapping[int, Any]] = {}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.timeout_keep_alive = self.limits.keepalive_timeout  # type: ignore[assignment]
        self._in_head = True  # between requests, or reading a head
        self._head_left = self.limits.max_header_bytes
        self._head_started = False  # a byte of the current head arrived
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._upgraded = False  # handed to the WebSocket protocol: its limits now

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        port = self.server[1] if self.server is not None else None
        if port is not None and port in self.port_apps:
            self.app = self.port_apps[port]
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        if self._in_head and data:
            self._head_started = True
            if len(data) > self._head_left:
                self._feed_up_to_the_limit(memoryview(data))
                return
            self._head_left -= len(data)
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parser_stopped(exc)
        if self._head_started or not self._in_head:  # not after a whole request: no timer
            self._arm_timer()

    # -- httptools callbacks --------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if len(self.headers) > self.limits.max_headers:
            raise Refused(431, f"headers: more than {self.limits.max_headers}")
        HttpToolsProtocol.on_headers_complete(self)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_left = self.limits.max_header_bytes
        self._head_started = False
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None
        HttpToolsProtocol.on_message_complete(self)

    # -- feeding the parser ---------------------------------------------------------------

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parser_stopped(exc)

    def _parser_stopped(self, exc: Exception) -> None:
        """As uvicorn's data_received has it, with `Refused` answered."""
        if isinstance(exc, httptools.HttpParserError):
            if isinstance(exc.__context__, Refused):
                self.refuse(exc.__context__.status, exc.__context__.details)
            else:
                message = "Invalid HTTP request received."
                self.logger.warning(message)
                self.send_400_response(message)
        else:  # HttpParserUpgrade
            if self._should_upgrade():
                self._upgraded = True
                self._cancel_timers()
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()

    def _feed_up_to_the_limit(self, data: memoryview) -> None:
        """Feed what the head may still take; if the head ends within it, the rest goes on as
        usual (a body, or the next request), else 431 without reading further."""
        allowed = self._head_left
        self._head_left = 0
        self._feed(data[:allowed])
        if self.transport.is_closing():
            return
        if self._in_head and self._head_left == 0:  # the same head, still unfinished
            self.refuse(431, f"headers: larger than {self.limits.max_header_bytes} bytes")
            return
        self.data_received(data[allowed:])  # type: ignore[arg-type]

    # -- timers ---------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        if self._upgraded:
            return
        if self._in_head:
            serving = self.cycle is not None and not self.cycle.response_complete
            if self._head_started and self._head_timer is None and not serving:
                self._head_timer = self.loop.call_later(
                    self.limits.header_timeout, self._head_timed_out
                )
        elif self._body_timer is None and not self.transport.is_closing():
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._in_head:
            return
        if self.cycle is not None and not self.cycle.response_complete:
            return  # a pipelined head waits for the request before it: not the client's delay
        if self._head_started:
            self.refuse(408, f"headers: not whole within {self.limits.header_timeout:g} s")
        else:
            self.transport.close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self._in_head:
            return
        if self.flow.read_paused:  # the application has not read what came: not the client
            self._body_timer = self.loop.call_later(self.limits.body_timeout, self._body_timed_out)
            return
        details = f"body: not whole within {self.limits.body_timeout:g} s"
        if self.cycle is not None and self.cycle.response_started:
            self._close_cycle()
            self.transport.close()
        else:
            self.refuse(408, details)

    def _cancel_timers(self) -> None:
        for timer in (self._head_timer, self._body_timer):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._body_timer = None

    # -- answering ------------------------------------------------------------------------

    def refuse(self, status: int, details: str) -> None:
        """Answer `status` with the error envelope and close the connection; a request in
        progress sees a disconnect, and what its application sends after is dropped."""
        self._close_cycle()
        self._cancel_timers()
        request_id = f"{random.getrandbits(128):032x}"
        body = json.dumps({"code": status, "details": details, "id": request_id}).encode()
        head = [STATUS_LINE[status]]
        head += [name + b": " + value + b"\r\n" for name, value in self.default_headers]
        head.append(
            b"content-type: application/json\r\ncontent-length: %d\r\nx-request-id: %s\r\n"
            b"connection: close\r\n\r\n" % (len(body), request_id.encode())
        )
        self.transport.write(b"".join([*head, body]))
        self.transport.close()

    @property
    def default_headers(self) -> list[tuple[bytes, bytes]]:
        """uvicorn's own (date, server), as on its answers."""
        return self.server_state.default_headers

    def _close_cycle(self) -> None:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()


def limited_protocol(
    limits: ClientLimits, port_apps: Mapping[int, Any] | None = None
) -> type[LimitedHttpToolsProtocol]:
    """The protocol class to give uvicorn (`Config(http=...)`): `limits` on every connection,
    and `port_apps[port]` instead of the server's app on a connection to that local port."""
    attributes = {"limits": limits, "port_apps": dict(port_apps or {})}
    return type("LimitedHttpToolsProtocol", (LimitedHttpToolsProtocol,), attributes)
