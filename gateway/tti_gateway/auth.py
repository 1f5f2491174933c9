"""Who calls (`401` when that fails) and what they may call (`403`).

Two kinds of credentials, both sent as `Authorization: Bearer TOKEN`:

- **Static tokens**, for callers outside the cluster: `--auth-tokens-file` (a mounted
  Secret), one token per line, each optionally scoped to namespaces and models:

      # comments and blank lines are skipped
      TOKEN                                    every model in every namespace
      TOKEN namespaces=team-a,team-b           every model of these namespaces
      TOKEN namespaces=team-a models=stub,xl   these models of team-a only
      TOKEN models=stub name=ci-bot            `stub` in any namespace; `name` labels the
                                               token in the gateway's log

  The file is read again when it changes (`TokensFile`): the gateway accepts exactly the
  tokens the file holds now, and a file it cannot read or parse holds none (fail closed,
  logged with the line at fault, never a token).
- **Kubernetes identities** (`--identity`): any token the API server authenticates for
  `--identity-audience` (a ServiceAccount's projected token), checked with a TokenReview;
  each call is then authorized with a SubjectAccessReview (`tti_gateway.identity`).

A static token is tried first; a token that is none of them is checked by the cluster. The
error never says why a token was refused: missing, unknown, expired and meant for another
audience all get the same `401`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import re
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tti_contracts.api import GROUP, PLURAL
from tti_gateway.endpoints import (
    EndpointTable,
    GatewayError,
    Model,
    Target,
    UnknownModel,
    only,
    readings,
)
from tti_gateway.identity import VERB, Identity, User

log = logging.getLogger(__name__)

#: The fields a token's line may carry after the token.
KEYS = ("namespaces", "models", "name")
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a namespace: a DNS label
_OBJECT = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # a model: a DNS subdomain
_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # printable, no space: what a header can carry
_KEY = re.compile(r"^[a-z]{1,20}$")

UNAUTHORIZED = "authorization: a valid bearer token is required (Authorization: Bearer TOKEN)"


class Unauthorized(GatewayError):
    """Who is calling could not be established: no credentials, or none that is valid."""

    status = 401

    def __init__(self) -> None:
        super().__init__(UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})


class Forbidden(GatewayError):
    """The caller is known and may not call this model."""

    status = 403


class BadRequest(GatewayError):
    status = 400


# -- static tokens ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scope:
    """What a static token may call: None means every namespace (every model)."""

    namespaces: frozenset[str] | None = None
    models: frozenset[str] | None = None

    @property
    def everything(self) -> bool:
        return self.namespaces is None and self.models is None

    def allows(self, namespace: str, name: str) -> bool:
        return (self.namespaces is None or namespace in self.namespaces) and (
            self.models is None or name in self.models
        )


@dataclass(frozen=True)
class StaticToken:
    digest: bytes  # SHA-256 of the token: the token itself is not kept
    scope: Scope
    label: str  # `name=`, else "line N": how the log names it


class TokenFileError(ValueError):
    """A tokens file that does not parse; the message names the line, never a token."""


def parse_tokens(text: str, source: str) -> list[StaticToken]:
    """Every token line of a tokens file (format in the module's docstring)."""
    tokens: list[StaticToken] = []
    seen: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        fields = _before_comment(line.split())
        if not fields:
            continue
        where = f"{source}: line {number}"
        token, *rest = fields
        if not _TOKEN.match(token):
            raise TokenFileError(f"{where}: the token has characters a header cannot carry")
        digest = _digest(token)
        if digest in seen:
            raise TokenFileError(f"{where}: the same token as line {seen[digest]}")
        seen[digest] = number
        scope, label = _line_fields(rest, where)
        tokens.append(StaticToken(digest, scope, label or f"line {number}"))
    return tokens


def _before_comment(fields: list[str]) -> list[str]:
    for index, field in enumerate(fields):
        if field.startswith("#"):
            return fields[:index]
    return fields


def _line_fields(fields: Iterable[str], where: str) -> tuple[Scope, str]:
    """The `KEY=VALUE` fields after a token."""
    values: dict[str, str] = {}
    for position, field in enumerate(fields, start=2):
        key, sep, value = field.partition("=")
        if not sep or not _KEY.match(key):
            # Not echoed: a token pasted with a space in it would end up in the log.
            raise TokenFileError(f"{where}: field {position} is not KEY=VALUE ({', '.join(KEYS)})")
        if key not in KEYS:
            raise TokenFileError(f"{where}: unknown key {key!r} (known: {', '.join(KEYS)})")
        if key in values:
            raise TokenFileError(f"{where}: {key} given twice")
        values[key] = value
    namespaces = _names(values.get("namespaces"), _NAME, "namespaces", where)
    models = _names(values.get("models"), _OBJECT, "models", where)
    return Scope(namespaces, models), values.get("name", "")


def _names(
    value: str | None, pattern: re.Pattern[str], key: str, where: str
) -> frozenset[str] | None:
    """A comma-separated list of names; absent or `*`: None (every one)."""
    if value is None or value == "*":
        return None
    names = [name for name in value.split(",") if name]
    if not names:
        raise TokenFileError(f"{where}: {key}= names none (leave it out, or `*`, for all)")
    for name in names:
        if not pattern.match(name):
            raise TokenFileError(f"{where}: {key}: {name!r} is not a Kubernetes name")
    return frozenset(names)


def read_tokens(path: Path) -> list[StaticToken]:
    """The tokens of `path`; at start a file without any is an error (a Secret left empty)."""
    tokens = parse_tokens(path.read_text(), str(path))
    if not tokens:
        raise TokenFileError(f"{path}: no token (one per line)")
    return tokens


class StaticTokens:
    def __init__(self, tokens: Iterable[StaticToken]) -> None:
        self.tokens = tuple(tokens)

    def match(self, token: str) -> StaticToken | None:
        """The entry of `token`, comparing its digest with every entry's (no early exit;
        digests have one length, so nothing reveals a token's length)."""
        given = _digest(token)
        found = None
        for entry in self.tokens:
            if hmac.compare_digest(given, entry.digest):
                found = entry
        return found


FileSignature = tuple[int, int, int, int]


def signature(path: Path) -> FileSignature:
    """What changes when the file does. `stat` follows symlinks: a mounted Secret's file is a
    symlink through `..data`, which the kubelet swaps to a new directory on an update, so the
    inode changes even where the size and the second do not."""
    status = os.stat(path)
    return (status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


class TokensFile:
    """The static tokens of a file, read again when it changes (`refresh`, or `watch`)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._signature: FileSignature | None = signature(path)
        self.tokens = StaticTokens(read_tokens(path))

    def refresh(self) -> bool:
        """Read the file again if it changed; True if it was read. A file that cannot be
        read or parsed holds no token until it is fixed: a rotation that went wrong must not
        keep a revoked token working."""
        try:
            current: FileSignature | None = signature(self.path)
        except OSError:
            current = None
        if current == self._signature and current is not None:
            return False
        self._signature = current
        try:
            tokens = parse_tokens(self.path.read_text(), str(self.path))
        except (OSError, UnicodeDecodeError, TokenFileError) as exc:
            log.error(
                "tokens file unusable: no static token is accepted until it is fixed: %s", exc
            )
            self.tokens = StaticTokens([])
            return True
        self.tokens = StaticTokens(tokens)
        log.info("tokens file %s read again: %d tokens", self.path, len(tokens))
        return True

    async def watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            self.refresh()


# -- callers ------------------------------------------------------------------------------


class Caller(Protocol):
    """Whoever sent a request, as far as what they may call."""

    #: May call every model (then the gateway asks nothing more, and lists everything).
    @property
    def unrestricted(self) -> bool: ...

    #: How the log names the caller (never a token).
    @property
    def name(self) -> str: ...

    async def may_generate(self, namespace: str, name: str) -> bool: ...


class Anyone:
    """No authentication configured: every caller may call every model."""

    unrestricted = True
    name = "anyone"

    async def may_generate(self, namespace: str, name: str) -> bool:
        return True


ANYONE = Anyone()


class StaticCaller:
    def __init__(self, token: StaticToken) -> None:
        self.token = token
        self.unrestricted = token.scope.everything
        self.name = f"static token {token.label}"

    async def may_generate(self, namespace: str, name: str) -> bool:
        return self.token.scope.allows(namespace, name)


class KubeCaller:
    """A caller the API server authenticated; RBAC says what it may call."""

    unrestricted = False

    def __init__(self, identity: Identity, user: User) -> None:
        self.identity, self.user = identity, user
        self.name = user.username

    async def may_generate(self, namespace: str, name: str) -> bool:
        return await self.identity.may_generate(self.user, namespace, name)


class Access:
    """The gateway's front door: the caller of a request, from its `Authorization` header."""

    def __init__(self, tokens: TokensFile | None, identity: Identity | None) -> None:
        self.tokens = tokens
        self.identity = identity
        self.enabled = tokens is not None or identity is not None

    async def caller(self, authorization: str | None) -> Caller:
        if not self.enabled:
            return ANYONE
        scheme, _, token = (authorization or "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized()
        if self.tokens is not None:
            entry = self.tokens.tokens.match(token)
            if entry is not None:
                return StaticCaller(entry)
        if self.identity is not None:
            user = await self.identity.authenticate(token)
            if user is not None:
                return KubeCaller(self.identity, user)
        raise Unauthorized()

    async def run(self, interval: float) -> None:
        """Watch the tokens file for changes, until cancelled."""
        if self.tokens is not None:
            await self.tokens.watch(interval)

    @contextlib.asynccontextmanager
    async def running(self, interval: float) -> AsyncIterator[None]:
        task = asyncio.get_running_loop().create_task(self.run(interval), name="tokens file")
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# -- what a caller may call ---------------------------------------------------------------


def forbidden(requested: str, caller: Caller) -> Forbidden:
    log.info("refused: %s may not use %r", caller.name, requested)
    return Forbidden(
        f"model: this caller may not use {requested!r} (it needs RBAC verb {VERB} on "
        f"{PLURAL} in {GROUP}, or a token scoped to the model)"
    )


async def allowed(caller: Caller, models: Iterable[Model]) -> list[Model]:
    """The models of `models` the caller may call (their reviews at once)."""
    models = list(models)
    if caller.unrestricted:
        return models
    if len(models) == 1:  # the usual request: no tasks to gather (tens of microseconds)
        return models if await caller.may_generate(models[0].namespace, models[0].name) else []
    verdicts = await asyncio.gather(*(caller.may_generate(m.namespace, m.name) for m in models))
    return [model for model, verdict in zip(models, verdicts, strict=True) if verdict]


async def resolve_for(table: EndpointTable, requested: str, caller: Caller) -> Target:
    """The model (or adapter of one) a request names, among those its caller may call,
    checked before the request is held or wakes anything.

    A bare name means the one model of that name the caller may call (so two teams may
    each have a `stub` and call it by that name). A name with a namespace is authorized
    before it is looked up, as the API server does: whoever may not call it learns nothing
    of whether it exists. A name the caller may not call is `403`; the `404` of an unknown
    name lists no model (`GET /v1/models` lists those the caller may call), and an unknown
    adapter of a model the caller may call lists that model's adapters. An adapter is
    called with its model's permission.
    """
    if caller.unrestricted:
        return table.resolve(requested)
    candidates = table.candidates(requested)
    permitted = set(await allowed(caller, {target.model for target in candidates}))
    targets = [target for target in candidates if target.model in permitted]
    if targets:
        return only(requested, targets)
    raise await _refusal(table, requested, caller, exists=bool(candidates))


async def _refusal(
    table: EndpointTable, requested: str, caller: Caller, *, exists: bool
) -> GatewayError:
    """Why a restricted caller gets nothing for `requested`. Whether a model the caller may
    not call exists is never told: a name with a namespace the caller may not call that
    name in is 403, found or not."""
    bare = {m for r in readings(requested) for m in table.models.values() if m.name == r.name}
    hint = table.missing_adapter(requested, await allowed(caller, bare))
    if hint is not None:
        return UnknownModel(hint)
    if exists:
        return forbidden(requested, caller)
    for reading in readings(requested):
        if reading.namespace is not None and not await caller.may_generate(
            reading.namespace, reading.name
        ):
            return forbidden(requested, caller)
    return UnknownModel(
        f"model: {requested!r} is not served here; GET /v1/models lists the models "
        "this caller may use"
    )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
