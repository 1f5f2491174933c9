"""A minimal async Kubernetes client, for the operator and the gateway alike.

Whoever logs in (kopf, in both programs) hands over the credentials (`Credentials`); this
client reuses them over aiohttp, so nothing blocks a thread. Objects are written with
server-side apply: one idempotent request creates or updates, and a reapply of the same
object is a no-op on the server. Where an object lives comes from its kind (`Located`).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Mapping
from typing import Any, Protocol

import aiohttp

from tti_contracts.api import model_path

Obj = dict[str, Any]

_EVENTS_PATH = "/api/v1/namespaces/{ns}/events"
#: The API server ends a watch after this long; it is then resumed where it stopped.
WATCH_TIMEOUT_S = 300


class Credentials(Protocol):
    """How to reach and authenticate to the API server (kopf's `ConnectionInfo` is one)."""

    @property
    def server(self) -> str: ...

    @property
    def trust_env(self) -> bool: ...

    def as_ssl_context(self) -> ssl.SSLContext: ...

    def as_http_headers(self) -> Mapping[str, str]: ...


class Located(Protocol):
    """A kind of object, as far as the client needs it: where one of them lives."""

    def object_path(self, namespace: str, name: str) -> str: ...


class ApiError(Exception):
    """The API server answered with an error; `status` is the HTTP status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message

    @property
    def permanent(self) -> bool:
        """Retrying the same request cannot help (the object itself was refused)."""
        return self.status in (400, 404, 422)


class KubeClient:
    """Server-side apply, deletes, status patches, scaling, Events, lists and watches, and the
    token and access reviews of a server that delegates authentication (the gateway)."""

    def __init__(
        self, field_manager: str, timeout_s: float = 30.0, max_in_flight: int = 16
    ) -> None:
        self.field_manager = field_manager
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        # Hundreds of resources created at once must not become hundreds of concurrent
        # writes: the API server slows down for everyone and requests time out. Waiting
        # for a slot costs nothing, and the timeout only counts once a request is sent.
        self._slots = asyncio.Semaphore(max_in_flight)
        self._session: aiohttp.ClientSession | None = None
        self._server = ""

    async def connect(self, info: Credentials) -> None:
        """(Re)connect with fresh credentials (kopf logs in again after a 401)."""
        await self.close()
        self._server = info.server.rstrip("/")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=info.as_ssl_context(), limit=0),
            headers={**info.as_http_headers(), "User-Agent": self.field_manager},
            timeout=self._timeout,
            trust_env=info.trust_env,
        )

    async def close(self) -> None:
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()
            # The connections' transports close on the loop's next turns; let them, so
            # none is left to the garbage collector when the loop ends right after.
            await asyncio.sleep(0.05)

    async def _request(
        self, method: str, path: str, body: Obj | None, content_type: str, params: dict[str, str]
    ) -> tuple[int, Obj]:
        async with self._slots:
            # Looked up once a slot is free: a re-login may have replaced the session.
            session = self._session
            if session is None:
                raise ApiError(503, "not connected to the API server")
            try:
                async with session.request(
                    method,
                    self._server + path,
                    params=params,
                    data=None if body is None else json.dumps(body),
                    headers={"Content-Type": content_type} if content_type else None,
                ) as response:
                    payload = await _payload(response)
                    if response.status >= 400:
                        raise ApiError(response.status, _message(payload))
                    if not isinstance(payload, dict):
                        # A proxy's page with a 2xx status, say: not an answer of the API server.
                        raise ApiError(502, f"not a JSON object from the API server: {payload!r}")
                    return response.status, payload
            except (aiohttp.ClientError, TimeoutError) as error:
                raise ApiError(503, f"API server unreachable: {error!r}") from error

    async def apply(self, kind: Located, obj: Obj) -> tuple[bool, Obj]:
        """Server-side apply `obj` (of `kind`); returns (created, the object as stored)."""
        meta = obj["metadata"]
        path = kind.object_path(meta["namespace"], meta["name"])
        # Forced: this operator owns every field it sets, also after a hand edit.
        params = {"fieldManager": self.field_manager, "force": "true"}
        status, stored = await self._request(
            "PATCH", path, obj, "application/apply-patch+yaml", params
        )
        return status == 201, stored

    async def delete(self, kind: Located, namespace: str, name: str, uid: str) -> None:
        """Delete the object `name` if it is still the one with `uid`: one already gone
        (404), or replaced by a namesake since (409: the uid precondition failed), is left."""
        body = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": {"uid": uid},
            "propagationPolicy": "Background",
        }
        try:
            await self._request(
                "DELETE", kind.object_path(namespace, name), body, "application/json", {}
            )
        except ApiError as error:
            if error.status not in (404, 409):
                raise

    async def merge_patch(self, kind: Located, namespace: str, name: str, body: Obj) -> Obj:
        """A JSON merge patch of one object (a key set to None is removed); returns it as stored."""
        params = {"fieldManager": self.field_manager}
        path = kind.object_path(namespace, name)
        return (await self._request("PATCH", path, body, "application/merge-patch+json", params))[1]

    async def log(self, namespace: str, pod: str, container: str, tail_lines: int) -> str:
        """The last lines a pod's container wrote."""
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
        params = {"container": container, "tailLines": str(tail_lines)}
        async with self._slots:
            session = self._session
            if session is None:
                raise ApiError(503, "not connected to the API server")
            try:
                async with session.get(self._server + path, params=params) as response:
                    if response.status >= 400:
                        raise ApiError(response.status, _message(await _payload(response)))
                    return await response.text(errors="replace")
            except (aiohttp.ClientError, TimeoutError) as error:
                raise ApiError(503, f"API server unreachable: {error!r}") from error

    async def create_event(self, event: Obj) -> None:
        """POST a core/v1 Event."""
        path = _EVENTS_PATH.format(ns=event["metadata"]["namespace"])
        await self._request("POST", path, event, "application/json", {})

    async def patch_status(self, namespace: str, name: str, status: Obj) -> None:
        path = model_path(namespace, name, "status")
        params = {"fieldManager": self.field_manager}
        body = {"status": status}
        await self._request("PATCH", path, body, "application/merge-patch+json", params)

    async def scale(
        self, namespace: str, name: str, replicas: int, resource_version: str = ""
    ) -> None:
        """Set a model's replicas through its scale subresource (what `kubectl scale` does);
        with `resource_version`, only if the model is still that version (else 409)."""
        path = model_path(namespace, name, "scale")
        params = {"fieldManager": self.field_manager}
        body: Obj = {"spec": {"replicas": replicas}}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        await self._request("PATCH", path, body, "application/merge-patch+json", params)

    async def review_token(self, token: str, audiences: list[str]) -> Obj:
        """A TokenReview of `token` for `audiences` (POST, cluster-scoped); its `status`:
        `authenticated`, `user` and the `audiences` the token is valid for."""
        body: Obj = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenReview",
            "spec": {"token": token, "audiences": audiences},
        }
        return await self._review("/apis/authentication.k8s.io/v1/tokenreviews", body)

    async def review_access(self, spec: Obj) -> Obj:
        """A SubjectAccessReview (POST, cluster-scoped) of `spec` (user, groups, uid, extra
        and `resourceAttributes`); its `status`: `allowed`, and `denied` where a deny is
        explicit."""
        body: Obj = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": spec,
        }
        return await self._review("/apis/authorization.k8s.io/v1/subjectaccessreviews", body)

    async def _review(self, path: str, body: Obj) -> Obj:
        status = (await self._request("POST", path, body, "application/json", {}))[1].get("status")
        return status if isinstance(status, dict) else {}

    async def list(self, path: str, params: dict[str, str]) -> Obj:
        """GET a collection (a `...List` object with `items` and its resourceVersion)."""
        return (await self._request("GET", path, None, "", params))[1]

    async def watch(self, path: str, params: dict[str, str]) -> AsyncIterator[Obj]:
        """The watch events of a collection, one dict per event, until the server ends it."""
        session = self._session
        if session is None:
            raise ApiError(503, "not connected to the API server")
        params = {
            **params,
            "watch": "true",
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_TIMEOUT_S),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=WATCH_TIMEOUT_S + 30)
        try:
            async with session.get(self._server + path, params=params, timeout=timeout) as response:
                if response.status >= 400:
                    raise ApiError(response.status, _message(await _payload(response)))
                async for line in _lines(response.content):
                    yield json.loads(line)
        except (aiohttp.ClientError, TimeoutError) as error:
            raise ApiError(503, f"watch of {path} broke: {error!r}") from error


async def _payload(response: aiohttp.ClientResponse) -> Obj | str:
    """The answer's JSON object, else its text: a proxy in front of the API server (or the
    server under stress) can answer with an HTML page or an empty body, and that must become
    an `ApiError` with its status (a 502 is worth a retry), not a JSON decoding error."""
    raw = await response.read()
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        return payload
    text = raw.decode(errors="replace").strip()
    return " ".join(text.split())[:200] or str(response.reason or "")


def _message(payload: Obj | str) -> str:
    return str(payload.get("message", payload)) if isinstance(payload, dict) else payload


async def _lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """Whole lines of a stream, however long: aiohttp's own line reader has a size limit."""
    pending = b""
    async for chunk in content.iter_any():
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.strip():
                yield line
    if pending.strip():
        yield pending
