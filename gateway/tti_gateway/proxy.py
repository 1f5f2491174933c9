"""Forwarding one generation request: read it (bounded), find its model, send it on, stream back.

The body is read once (it is small: a prompt and parameters) to learn the model it names,
then sent unchanged; the answer (an image, possibly megabytes) is streamed to the client
chunk by chunk as it arrives, never held whole. An answer of server-sent events (a model's
previews while it denoises) goes on the same way, each chunk as soon as it arrives, bounded
by its silences rather than its length, and ended at the pod when its client goes away. A
pod that cannot be reached (nothing was sent) is marked not ready and the request goes once
more, to another pod.

Headers of one hop (RFC 9110 §7.6.1: those listed below and every one the `Connection`
header names) are dropped both ways. The pod gets `X-Forwarded-For` with the client's
address appended; the client's own forwarding headers reach it only from a peer in
`--trusted-proxies` (anyone else could write any address there).
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import time
from collections.abc import Iterable
from typing import Protocol

from starlette.types import Receive, Scope, Send

from tti_contracts.envelope import request_id
from tti_contracts.routes import MODEL_HEADER, Route
from tti_gateway.auth import ANYONE, Access, BadRequest, Caller, resolve_for
from tti_gateway.endpoints import Endpoint, EndpointTable, GatewayError, Model, Target
from tti_gateway.envelope import error_response
from tti_gateway.metrics import UNKNOWN, GatewayMetrics
from tti_gateway.settings import GatewaySettings
from tti_gateway.upstream import Connection, Pool, Unreachable, UpstreamError

log = logging.getLogger(__name__)


class Gateway(Protocol):
    """What forwarding needs of the gateway (`tti_gateway.app.Gateway`)."""

    settings: GatewaySettings
    table: EndpointTable
    metrics: GatewayMetrics
    pool: Pool
    access: Access
    trusted_proxies: TrustedProxies


_MODEL_HEADER = MODEL_HEADER.encode()
#: Headers that belong to one hop, never forwarded (RFC 9110 §7.6.1, and Proxy-Connection,
#: its old spelling), besides every header that `Connection` names. As bytes: ASGI gives
#: header names lowercased, as bytes.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
     b"proxy-connection", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)  # fmt: skip
#: A client's claims about the hops before it: passed on only from a trusted proxy.
FORWARDING = frozenset(
    {b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"forwarded"}
)
#: Dropped from the request besides: those the gateway sets itself.
_REQUEST_RESET = frozenset({b"content-length", b"x-request-id", b"expect", _MODEL_HEADER})
_RESPONSE_DROP = HOP_BY_HOP | {b"x-request-id"}


class BodyTooLarge(GatewayError):
    status = 413


class BadGateway(GatewayError):
    status = 502


class GatewayTimeout(GatewayError):
    status = 504


def header(scope: Scope, name: str) -> str | None:
    key = name.encode()
    for raw_name, value in scope["headers"]:
        if raw_name == key:
            return str(value.decode("latin-1"))
    return None


def authorization(scope: Scope) -> str | None:
    """The one `Authorization` header; two are refused, since proxies and servers disagree on
    which of them counts."""
    found: list[bytes] = [value for name, value in scope["headers"] if name == b"authorization"]
    if len(found) > 1:
        raise BadRequest(f"authorization: {len(found)} Authorization headers; send one")
    return found[0].decode("latin-1") if found else None


async def caller_of(gateway: Gateway, scope: Scope) -> Caller:
    """Who sent the request (`401` if that cannot be told, `400` for two credentials)."""
    given = authorization(scope)
    access = gateway.access
    return await access.caller(given) if access.enabled else ANYONE


def connection_names(value: bytes) -> frozenset[bytes]:
    """The header names a `Connection` header lists (hop-by-hop by that listing)."""
    return frozenset(filter(None, (token.strip().lower() for token in value.split(b","))))


def without_named(
    headers: list[tuple[bytes, bytes]], named: Iterable[bytes]
) -> list[tuple[bytes, bytes]]:
    names = frozenset(named)
    return [(name, value) for name, value in headers if name not in names]


class TrustedProxies:
    """The peers whose forwarding headers the gateway passes on: `--trusted-proxies`."""

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self.networks = tuple(networks)
        self._seen: dict[str, bool] = {}  # peer address: trusted (bounded below)

    def __contains__(self, host: str) -> bool:
        if not self.networks:
            return False
        trusted = self._seen.get(host)
        if trusted is None:
            if len(self._seen) >= 4096:
                self._seen.clear()
            trusted = self._seen[host] = self._match(host)
        return trusted

    def _match(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)


class ProxyRoute:
    """The ASGI endpoint of one forwarded route."""

    def __init__(self, gateway: Gateway, spec: Route, path: str) -> None:
        self.gateway = gateway
        self.spec = spec
        self.target = path.encode()  # what the pod gets, whichever spelling the client used
        dropped = HOP_BY_HOP | _REQUEST_RESET
        if gateway.access.enabled:
            dropped |= {b"authorization"}  # the gateway's token, not the pod's business
        self._drop_from_trusted = dropped
        self._drop = dropped | FORWARDING
        proxies = gateway.trusted_proxies
        self._trusted = proxies if proxies.networks else None  # None: no lookup per request

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.monotonic()
        rid = request_id(header(scope, "x-request-id"))
        labels, status = UNKNOWN, 500
        try:
            caller = await caller_of(self.gateway, scope)
            body = await read_body(scope, receive, self.gateway.settings.max_body_bytes)
            requested = self.model_name(scope, body, caller)
            # Authorized here, before the request is held or wakes the model.
            target = await resolve_for(self.gateway.table, requested, caller)
            labels = target.model.key
            upstream = target.upstream_name
            if requested != upstream:  # NAMESPACE/NAME: the pod knows the bare name
                body = self.renamed(scope, body, upstream)
            status = await self.forward(scope, receive, send, target, body, rid, start)
        except GatewayError as exc:
            status = exc.status
            await error_response(status, exc.details, rid, exc.headers)(scope, receive, send)
        finally:
            self.gateway.metrics.observe(labels, status, time.monotonic() - start)

    def model_name(self, scope: Scope, body: bytes, caller: Caller = ANYONE) -> str:
        """The model named in a JSON body, else in the `mm-model-id` header."""
        field = self.spec.model_field
        content_type = header(scope, "content-type") or "application/json"
        if content_type.startswith("application/json"):
            try:
                document = json.loads(body)
            except ValueError as exc:
                raise _schema_error(self.spec, f"body: invalid JSON ({exc})") from None
            name = document.get(field) if isinstance(document, dict) else None
            if isinstance(name, str) and name:
                return name
        name = header(scope, MODEL_HEADER)
        if name:
            return name
        known = ", ".join(sorted(m.label for m in self.gateway.table.models.values())) or "none"
        if not caller.unrestricted:  # not every model is this caller's to know of
            known = "GET /v1/models lists those this caller may use"
        raise _schema_error(
            self.spec, f"{field}: required to choose a model (or header {MODEL_HEADER}); "
            f"known models: {known}"
        )  # fmt: skip

    def renamed(self, scope: Scope, body: bytes, name: str) -> bytes:
        """The body naming the model by `name` (a JSON body's field; the header is reset
        for every request in `_headers`)."""
        if not (header(scope, "content-type") or "application/json").startswith("application/json"):
            return body
        document = json.loads(body)
        if isinstance(document, dict) and self.spec.model_field in document:
            document[self.spec.model_field] = name
        return json.dumps(document).encode()

    async def forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        target: Target,
        body: bytes,
        rid: str,
        start: float,
    ) -> int:
        """Send to the least-busy ready pod; once more elsewhere if it cannot be reached."""
        deadline = start + self.gateway.settings.hold_timeout
        model = target.model
        request = self.upstream_request(scope, body, rid, target.upstream_name)
        tried: list[str] = []
        for _attempt in range(2):
            # Busy for as long as its answer lasts: a stream of previews, minutes.
            async with self.gateway.table.acquire(model, deadline, tried) as endpoint:
                try:
                    return await self._exchange(endpoint, model, request, receive, send, rid)
                except Unreachable as exc:
                    log.warning(
                        "pod %s of %s unreachable (%s); trying another",
                        endpoint.url,
                        model.label,
                        exc,
                    )
                    self.gateway.table.set_ready(model.key, endpoint.url, False)
                    self.gateway.metrics.retry(model.key)
                    tried.append(endpoint.url)
        raise BadGateway(f"model: no pod of {model.label!r} could be reached (tried {len(tried)})")

    async def _exchange(
        self,
        endpoint: Endpoint,
        model: Model,
        request: bytes,
        receive: Receive,
        send: Send,
        rid: str,
    ) -> int:
        """The pod's answer streamed back; its status, or the gateway's when it did not end
        well (`stream_back`, `stream_events`).

        --upstream-timeout bounds the wait for the answer's head (else a 504), and the whole
        of an answer that is not an event stream."""
        settings = self.gateway.settings
        deadline = asyncio.get_running_loop().time() + settings.upstream_timeout
        try:
            async with asyncio.timeout_at(deadline):
                answer = await self.gateway.pool.send(endpoint.url, request)
        except TimeoutError:
            retry = {"Retry-After": str(self.gateway.settings.retry_after)}
            raise GatewayTimeout(f"model: {model.label!r} did not answer in time", retry) from None
        except UpstreamError as exc:
            raise BadGateway(f"model: the pod of {model.label!r} failed: {exc}") from None
        try:
            if is_event_stream(answer.headers):
                return await stream_events(answer, receive, send, rid, settings.stream_idle_timeout)
            return await stream_back(answer, send, rid, deadline)
        finally:
            self.gateway.pool.release(endpoint.url, answer)

    def upstream_request(self, scope: Scope, body: bytes, rid: str, model: str) -> bytes:
        """The request as the pod gets it, head and body in one piece: the client's headers
        less those of one hop (and its token), the model's bare name where a header named
        it, the client's address appended to X-Forwarded-For, the request id."""
        client = scope.get("client")
        peer = client[0] if client else None
        trusted = self._trusted is not None and peer is not None and peer in self._trusted
        drop = self._drop_from_trusted if trusted else self._drop
        kept: list[tuple[bytes, bytes]] = []
        named: set[bytes] = set()
        forwarded_for: list[bytes] = []  # the hops before, as a trusted proxy says
        for name, value in scope["headers"]:
            if name not in drop:
                kept.append((name, value))
            elif name == b"connection":
                named |= connection_names(value) - drop  # mostly keep-alive or close
        named.discard(b"close")
        if named:
            kept = without_named(kept, named)
        if trusted:
            forwarded_for = [value for name, value in kept if name == b"x-forwarded-for"]
            kept = without_named(kept, (b"x-forwarded-for",))
        target = self.target
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        lines = [b"POST " + target + b" HTTP/1.1\r\n"]
        lines += [name + b": " + value + b"\r\n" for name, value in kept]
        if peer is not None:
            forwarded_for.append(peer.encode())
            lines.append(b"x-forwarded-for: " + b", ".join(forwarded_for) + b"\r\n")
        if header(scope, MODEL_HEADER) is not None:
            lines.append(b"%s: %s\r\n" % (_MODEL_HEADER, model.encode()))
        lines.append(b"x-request-id: %s\r\ncontent-length: %d\r\n\r\n" % (rid.encode(), len(body)))
        lines.append(body)
        return b"".join(lines)


#: A body over the limit is still read, and dropped, up to this many times the limit before
#: the 413: a client that writes its whole body before reading (most do) then gets the answer
#: instead of a connection reset. A larger body gets the 413 and a closed connection.
DRAIN_FACTOR = 8


async def read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    too_large = BodyTooLarge(f"body: larger than the gateway's limit of {limit} bytes")
    declared = header(scope, "content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        if int(declared) <= DRAIN_FACTOR * limit:
            await drain(receive, int(declared))
        raise too_large
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("body: the client went away while sending it")
        chunk = message.get("body", b"")
        size += len(chunk)
        more = message.get("more_body", False)
        if size > limit:
            if more:
                await drain(receive, DRAIN_FACTOR * limit - size)
            raise too_large
        chunks.append(chunk)
        if not more:
            return b"".join(chunks)


async def drain(receive: Receive, budget: int) -> None:
    """Read and drop the rest of a request's body, `budget` bytes at the most."""
    more = True
    while more and budget > 0:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        budget -= len(message.get("body", b""))
        more = message.get("more_body", False)


def response_headers(raw: list[tuple[bytes, bytes]], rid: str) -> list[tuple[bytes, bytes]]:
    """The pod's headers as the client gets them: less those of one hop, with the request id."""
    headers: list[tuple[bytes, bytes]] = []
    named: frozenset[bytes] = frozenset()
    for name, value in raw:
        lowered = name.lower()
        if lowered not in _RESPONSE_DROP:
            headers.append((lowered, value))
        elif lowered == b"connection":
            named |= connection_names(value)
    if named:
        headers = without_named(headers, named)
    headers.append((b"x-request-id", rid.encode()))
    return headers


def is_event_stream(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether an answer is server-sent events (`text/event-stream`, any parameters)."""
    for name, value in headers:
        if name.lower() == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == b"text/event-stream"
    return False


#: The status counted for a stream whose client went away first (nginx's "client closed
#: request"): no answer of the pod's, and not the gateway's fault.
CLIENT_GONE = 499


async def stream_back(answer: Connection, send: Send, rid: str, deadline: float) -> int:
    """An answer streamed back as it arrives, whole by `deadline` (--upstream-timeout)."""
    await send_head(answer, send, rid)
    try:
        async with asyncio.timeout_at(deadline):
            async for chunk, more in answer.body():
                await send({"type": "http.response.body", "body": chunk, "more_body": more})
    except (UpstreamError, TimeoutError) as exc:
        why = exc if isinstance(exc, UpstreamError) else "not whole within --upstream-timeout"
        return broke_off(rid, why, 502)
    return answer.status


async def stream_events(
    answer: Connection, receive: Receive, send: Send, rid: str, idle_timeout: float
) -> int:
    """An event stream (a model's previews, over minutes) passed on chunk by chunk.

    Its whole length is not bounded, its silences are (`relay_events`). A client that goes
    away closes the connection to the pod: that is how the pod learns to stop sending it
    previews, and a connection left mid-answer cannot serve another request.
    """
    await send_head(answer, send, rid)
    relay = asyncio.ensure_future(relay_events(answer, send, idle_timeout))
    # The request's body was read whole: what receive() has left to say is the disconnect.
    gone = asyncio.ensure_future(receive())
    try:
        await asyncio.wait((relay, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        left_first = not relay.done()
        if left_first:
            relay.cancel()
            answer.close()
    if left_first:
        log.info("the client left the event stream (request %s): closed it at the pod", rid)
        return CLIENT_GONE
    try:
        relay.result()
    except UpstreamError as exc:
        return broke_off(rid, exc, 502)
    except TimeoutError:
        return broke_off(rid, f"silent for --stream-idle-timeout ({idle_timeout:g} s)", 504)
    return answer.status


async def relay_events(answer: Connection, send: Send, idle_timeout: float) -> None:
    """The body sent on as it arrives; TimeoutError when the pod is silent for longer than
    `idle_timeout` between two chunks (the client's own slowness does not count)."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(idle_timeout) as silence:
        async for chunk, more in answer.body():
            silence.reschedule(None)
            await send({"type": "http.response.body", "body": chunk, "more_body": more})
            silence.reschedule(loop.time() + idle_timeout)


async def send_head(answer: Connection, send: Send, rid: str) -> None:
    headers = response_headers(answer.headers, rid)
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})


def broke_off(rid: str, why: object, status: int) -> int:
    """Too late for an error answer (the status is on the wire): the response is left
    unfinished, which uvicorn ends by closing the connection, so the client sees it break.
    `status` is what the metrics count."""
    log.warning("the pod's answer broke off (request %s): %s", rid, why)
    return status


def _schema_error(spec: Route, details: str) -> GatewayError:
    error = GatewayError(details)
    error.status = spec.schema_error_status
    return error
