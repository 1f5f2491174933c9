"""Callers the cluster knows: a token checked with a TokenReview, each call authorized with a
SubjectAccessReview on the model, as a Kubernetes API server delegates both (the way
kube-rbac-proxy does).

- **Who** (`authenticate`): a TokenReview of the bearer token for `--identity-audience`; the
  token counts only if the API server says it is authenticated *and* meant for that
  audience (a ServiceAccount's projected token with `audience: tti-gateway`). A token
  meant for the API server itself, or for anything else, is refused: a pod's default token
  cannot be replayed here, nor one the gateway was shown replayed elsewhere.
- **May they** (`may_generate`): a SubjectAccessReview of verb `generate` on
  `texttoimagemodels` in `tti.dev`, with the model's namespace and name, for the user,
  groups, uid and extra the TokenReview gave. A platform team grants it with a Role and a
  RoleBinding, as for anything else (the chart ships an aggregatable ClusterRole).

Both decisions are cached (`DecisionCache`): a positive one for `--identity-allow-ttl`
seconds, a negative one for `--identity-deny-ttl`, at most `--identity-cache-size` of each
(the least recently used go first). A token is a cache key only as its HMAC under a key
drawn at start, never in clear; a burst of requests with one new token makes one review.
Only a token shaped like a JWT is sent for review: anything else is refused at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from tti_contracts.api import GROUP, PLURAL
from tti_gateway.endpoints import GatewayError
from tti_kube.client import ApiError

log = logging.getLogger(__name__)

#: The RBAC verb a call of a model needs (and waking it from zero: the same call).
VERB = "generate"
#: A JWT: three base64url parts; a TokenReview of anything else is a waste of the API's time.
_JWT = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")
MAX_TOKEN_CHARS = 16 * 1024

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Unavailable(GatewayError):
    """The API server could not review a credential now; a retry may succeed."""

    status = 503


class DecisionCache(Generic[K, V]):
    """Decisions by key, each for a while: a truthy one `allow_ttl` seconds, a falsy one
    `deny_ttl`; at most `size`, the least recently used dropped first. Concurrent misses of
    one key share one `decide` (its failure is not cached: the next miss asks again)."""

    def __init__(
        self,
        size: int,
        allow_ttl: float,
        deny_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.size, self.allow_ttl, self.deny_ttl, self.clock = size, allow_ttl, deny_ttl, clock
        self._entries: OrderedDict[K, tuple[float, V]] = OrderedDict()
        self._pending: dict[K, asyncio.Task[V]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def cached_keys(self) -> list[K]:
        return list(self._entries)

    def cached(self, key: K) -> tuple[bool, V | None]:
        """(True, the decision) while it holds; (False, None) if none does."""
        entry = self._entries.get(key)
        if entry is None:
            return False, None
        expires, value = entry
        if self.clock() >= expires:
            del self._entries[key]
            return False, None
        self._entries.move_to_end(key)
        return True, value

    def put(self, key: K, value: V) -> None:
        ttl = self.allow_ttl if value else self.deny_ttl
        if ttl <= 0:
            return
        self._entries[key] = (self.clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    async def get(self, key: K, decide: Callable[[], Awaitable[V]]) -> V:
        hit, value = self.cached(key)
        if hit:
            return value  # type: ignore[return-value]
        task = self._pending.get(key)
        if task is None:
            task = asyncio.ensure_future(self._decide(key, decide))
            # Its failure is read here too, so one with no caller left is not reported.
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._pending[key] = task
        # Shielded: a caller that goes away does not cancel the others' decision.
        return await asyncio.shield(task)

    async def _decide(self, key: K, decide: Callable[[], Awaitable[V]]) -> V:
        try:
            value = await decide()
            self.put(key, value)
            return value
        finally:
            del self._pending[key]


@dataclass(frozen=True)
class User:
    """Who the API server says a token belongs to (a TokenReview's `status.user`)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()

    @classmethod
    def from_review(cls, user: Mapping[str, Any]) -> User:
        extra = user.get("extra") or {}
        return cls(
            username=str(user.get("username", "")),
            uid=str(user.get("uid", "")),
            groups=tuple(str(g) for g in user.get("groups") or ()),
            extra=tuple(sorted((str(k), tuple(map(str, v or ()))) for k, v in extra.items())),
        )

    def access_review(self, namespace: str, name: str) -> dict[str, Any]:
        """The SubjectAccessReview's spec: may this user `generate` with the model?"""
        spec: dict[str, Any] = {
            "user": self.username,
            "groups": list(self.groups),
            "resourceAttributes": {
                "namespace": namespace,
                "verb": VERB,
                "group": GROUP,
                "resource": PLURAL,
                "name": name,
            },
        }
        if self.uid:
            spec["uid"] = self.uid
        if self.extra:
            spec["extra"] = {key: list(values) for key, values in self.extra}
        return spec

    @property
    def fingerprint(self) -> bytes:
        """One fixed-size key for everything a review is about (a user may have many groups)."""
        text = json.dumps([self.username, self.uid, self.groups, self.extra])
        return hashlib.sha256(text.encode()).digest()


def authenticated_user(status: Mapping[str, Any], audience: str) -> User | None:
    """The user of a TokenReview's status, if it authenticated the token for `audience`."""
    if status.get("authenticated") is not True or audience not in (status.get("audiences") or ()):
        return None
    user = status.get("user") or {}
    return User.from_review(user) if user.get("username") else None


def looks_like_a_jwt(token: str) -> bool:
    return len(token) <= MAX_TOKEN_CHARS and _JWT.match(token) is not None


class Reviewer(Protocol):
    """What `Identity` needs of a Kubernetes client (`tti_kube.client.KubeClient`)."""

    async def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]: ...

    async def review_access(self, spec: dict[str, Any]) -> dict[str, Any]: ...

    async def login(self) -> None: ...


@dataclass(frozen=True)
class CachePolicy:
    allow_ttl: float = 10.0
    deny_ttl: float = 2.0
    size: int = 10_000


class Identity:
    """TokenReview and SubjectAccessReview through `client`, each decision cached."""

    def __init__(
        self,
        client: Reviewer,
        audience: str,
        policy: CachePolicy,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.audience = audience
        self.users: DecisionCache[bytes, User | None] = DecisionCache(
            policy.size, policy.allow_ttl, policy.deny_ttl, clock
        )
        self.grants: DecisionCache[tuple[bytes, str, str], bool] = DecisionCache(
            policy.size, policy.allow_ttl, policy.deny_ttl, clock
        )
        # Drawn per process: a cache key tells nothing about a token, even to whoever can
        # read the gateway's memory and try candidate tokens against it.
        self._key = os.urandom(32)

    def token_key(self, token: str) -> bytes:
        return hmac.new(self._key, token.encode(), hashlib.sha256).digest()

    async def authenticate(self, token: str) -> User | None:
        """The user the token belongs to, or None if the API server does not vouch for it
        for this audience."""
        if not looks_like_a_jwt(token):
            return None

        async def review() -> User | None:
            status = await self._call(lambda: self.client.review_token(token, [self.audience]))
            return authenticated_user(status, self.audience)

        return await self.users.get(self.token_key(token), review)

    async def may_generate(self, user: User, namespace: str, name: str) -> bool:
        async def review() -> bool:
            spec = user.access_review(namespace, name)
            status = await self._call(lambda: self.client.review_access(spec))
            allowed = status.get("allowed") is True and status.get("denied") is not True
            if not allowed:
                log.debug("%s may not %s %s/%s", user.username, VERB, namespace, name)
            return allowed

        return await self.grants.get((user.fingerprint, namespace, name), review)

    async def _call(self, review: Callable[[], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
        """One review; once more after logging in again if the API server refused the
        gateway's own (rotated) token; a failure becomes a 503 worth retrying."""
        for attempt in (1, 2):
            try:
                return await review()
            except ApiError as error:
                if error.status == 401 and attempt == 1:
                    log.info("the API server refused our credentials: logging in again")
                    await self.client.login()
                    continue
                # The reason goes to the log, not to the client.
                log.error("a review failed: %s", error)
                raise Unavailable(
                    "authorization: the credentials cannot be checked now; retry later"
                ) from None
        raise AssertionError("unreachable")
