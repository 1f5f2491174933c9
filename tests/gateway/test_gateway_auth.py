"""The gateway's callers without a process: the tokens file's format and its re-reading, the
bounded cache of review decisions, and which model a caller's request resolves to.

The reviews themselves (TokenReview, SubjectAccessReview) are checked against a real API
server in test_gateway_identity.py; here a recording reviewer stands in for it, to count the
calls the cache saves.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from support.gateway import write_secret_volume

from tti_gateway.auth import (
    ANYONE,
    Access,
    Forbidden,
    Scope,
    StaticCaller,
    StaticTokens,
    TokenFileError,
    TokensFile,
    Unauthorized,
    parse_tokens,
    read_tokens,
    resolve_for,
)
from tti_gateway.endpoints import AmbiguousModel, EndpointTable, HoldPolicy, UnknownModel
from tti_gateway.identity import (
    CachePolicy,
    DecisionCache,
    Identity,
    User,
    authenticated_user,
    looks_like_a_jwt,
)
from tti_kube.client import ApiError

JWT = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl"


# -- the tokens file ----------------------------------------------------------------------


def test_the_old_format_one_token_per_line_means_everything() -> None:
    tokens = parse_tokens("# a comment\n\nfirst-token\n  second-token  \n", "f")
    assert [t.scope for t in tokens] == [Scope(), Scope()]
    assert [t.label for t in tokens] == ["line 3", "line 4"]
    assert all(t.scope.everything for t in tokens)


def test_scoped_tokens_name_namespaces_models_and_a_label() -> None:
    text = (
        "t1 namespaces=team-a,team-b\n"
        "t2 namespaces=team-a models=stub,sdxl-turbo name=ci-bot  # the CI's\n"
        "t3 models=stub\n"
        "t4 namespaces=* models=*\n"
    )
    t1, t2, t3, t4 = parse_tokens(text, "f")
    assert t1.scope == Scope(frozenset({"team-a", "team-b"}), None)
    assert t2.scope == Scope(frozenset({"team-a"}), frozenset({"stub", "sdxl-turbo"}))
    assert t2.label == "ci-bot"
    assert t3.scope == Scope(None, frozenset({"stub"}))
    assert t4.scope.everything
    assert t1.scope.allows("team-b", "anything") and not t1.scope.allows("team-c", "stub")
    assert t2.scope.allows("team-a", "stub") and not t2.scope.allows("team-a", "other")
    assert not t2.scope.allows("team-b", "stub")
    assert t3.scope.allows("any", "stub") and not t3.scope.allows("any", "other")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("secret-1 namespace=a", "line 1: unknown key 'namespace' (known: namespaces"),
        ("secret-1 team-a", "line 1: field 2 is not KEY=VALUE"),
        ("ok\nsecret-1 namespaces=Team_A", "line 2: namespaces: 'Team_A' is not a Kubernetes"),
        ("secret-1 models=", "line 1: models= names none"),
        ("secret-1 name=a name=b", "line 1: name given twice"),
        ("secret-1\nsecret-1 models=x", "line 2: the same token as line 1"),
        ("s\x7fcret", "line 1: the token has characters a header cannot carry"),
    ],
    ids=["unknown-key", "not-key-value", "bad-namespace", "empty-list", "twice", "dup", "ctl"],
)
def test_a_bad_line_is_named_and_no_token_is_shown(text: str, message: str) -> None:
    with pytest.raises(TokenFileError) as error:
        parse_tokens(text, "tokens")
    assert str(error.value).startswith("tokens: " + message)
    assert "secret-1" not in str(error.value)


def test_a_file_with_no_token_is_refused_at_start(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("# nothing yet\n")
    with pytest.raises(TokenFileError, match="no token"):
        read_tokens(path)


def test_a_token_matches_its_own_entry_only() -> None:
    tokens = StaticTokens(parse_tokens("alpha namespaces=a\nbeta\n", "f"))
    assert tokens.match("alpha").scope.namespaces == {"a"}  # type: ignore[union-attr]
    assert tokens.match("beta").scope.everything  # type: ignore[union-attr]
    assert tokens.match("alph") is None and tokens.match("") is None


def secret_volume(directory: Path, text: str, version: int) -> Path:
    write_secret_volume(directory, {"tokens": text}, version)
    return directory / "tokens"


def test_a_swapped_secret_volume_is_read_again(tmp_path: Path) -> None:
    path = secret_volume(tmp_path, "old-token\n", 1)
    tokens = TokensFile(path)
    assert not tokens.refresh()  # unchanged: not read
    assert tokens.tokens.match("old-token") is not None
    secret_volume(tmp_path, "new-token namespaces=a\n", 2)  # same size, same second maybe
    assert tokens.refresh()
    assert tokens.tokens.match("old-token") is None
    assert tokens.tokens.match("new-token") is not None


def test_a_rotation_that_breaks_the_file_accepts_no_static_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = secret_volume(tmp_path, "old-token\n", 1)
    tokens = TokensFile(path)
    secret_volume(tmp_path, "old-token\nnew-token namespace=a\n", 2)
    assert tokens.refresh()
    assert tokens.tokens.match("old-token") is None  # fail closed, not the old set
    assert "line 2: unknown key 'namespace'" in caplog.text and "new-token" not in caplog.text
    secret_volume(tmp_path, "# every token revoked\n", 3)  # empty is valid after start
    assert tokens.refresh() and tokens.tokens.tokens == ()
    secret_volume(tmp_path, "new-token\n", 4)
    assert tokens.refresh() and tokens.tokens.match("new-token") is not None


# -- the front door -----------------------------------------------------------------------


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


def test_no_auth_configured_lets_anyone_in() -> None:
    assert run(Access(None, None).caller(None)) is ANYONE


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer wrong", "Basic good-token", "bearer  ", JWT]
)
def test_every_refusal_is_the_same_401(tmp_path: Path, header: str | None) -> None:
    path = tmp_path / "tokens"
    path.write_text("good-token\n")
    with pytest.raises(Unauthorized) as refused:
        run(Access(TokensFile(path), None).caller(header))
    assert refused.value.status == 401
    assert refused.value.headers == {"WWW-Authenticate": "Bearer"}
    assert refused.value.details.startswith("authorization: a valid bearer token is required")


def test_a_static_token_is_its_scope(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text("scoped namespaces=team-a\nall\n")
    access = Access(TokensFile(path), None)
    scoped = run(access.caller("Bearer scoped"))
    assert not scoped.unrestricted
    assert run(scoped.may_generate("team-a", "m")) and not run(scoped.may_generate("team-b", "m"))
    assert run(access.caller("bearer all")).unrestricted  # the scheme is case-insensitive


# -- which model a caller's request means -------------------------------------------------


def table(*keys: tuple[str, str]) -> EndpointTable:
    t = EndpointTable(HoldPolicy(1, 1, 1))
    for key in keys:
        t.set_model(key, [])
    return t


def caller(line: str) -> StaticCaller:
    [token] = parse_tokens(line, "f")
    return StaticCaller(token)


def test_a_bare_name_means_the_one_the_caller_may_use() -> None:
    t = table(("team-a", "stub"), ("team-b", "stub"))
    with pytest.raises(AmbiguousModel):
        run(resolve_for(t, "stub", ANYONE))
    assert run(resolve_for(t, "stub", caller("t namespaces=team-b"))).model.key == (
        "team-b",
        "stub",
    )
    with pytest.raises(AmbiguousModel, match=r"\(team-a/stub and team-b/stub\)"):
        run(resolve_for(t, "stub", caller("t models=stub")))


def test_a_model_the_caller_may_not_use_is_403_and_an_unknown_one_lists_nothing() -> None:
    t = table(("team-a", "stub"), ("team-b", "secret-project"))
    team_a = caller("t namespaces=team-a")
    with pytest.raises(Forbidden) as forbidden:
        run(resolve_for(t, "team-b/secret-project", team_a))
    assert forbidden.value.status == 403
    with pytest.raises(Forbidden):
        run(resolve_for(t, "secret-project", team_a))
    # NAMESPACE/NAME is authorized before it is looked up: no telling what exists there.
    with pytest.raises(Forbidden):
        run(resolve_for(t, "team-b/nothing-here", team_a))
    with pytest.raises(UnknownModel) as unknown:
        run(resolve_for(t, "team-a/nothing-here", team_a))
    assert "secret-project" not in unknown.value.details
    assert "GET /v1/models lists the models this caller may use" in unknown.value.details
    with pytest.raises(UnknownModel, match="known models: team-a/stub, team-b/secret-project"):
        run(resolve_for(t, "nothing-here", ANYONE))  # no auth: as before, every name


# -- the decision cache -------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def decide_counting(value: Any, calls: list[int]) -> Any:
    async def decide() -> Any:
        calls.append(1)
        return value

    return decide


def test_allow_and_deny_are_kept_for_their_own_time() -> None:
    clock = Clock()
    cache: DecisionCache[str, bool] = DecisionCache(10, allow_ttl=10, deny_ttl=2, clock=clock)
    calls: list[int] = []

    async def scenario() -> None:
        assert await cache.get("yes", decide_counting(True, calls))
        assert not await cache.get("no", decide_counting(False, calls))
        clock.now += 1.9
        await cache.get("yes", decide_counting(True, calls))
        await cache.get("no", decide_counting(False, calls))
        assert len(calls) == 2  # both still cached
        clock.now += 0.1  # the deny is 2 s old: asked again; the allow holds
        await cache.get("yes", decide_counting(True, calls))
        await cache.get("no", decide_counting(False, calls))
        assert len(calls) == 3
        clock.now += 8.0  # the allow is 10 s old
        await cache.get("yes", decide_counting(True, calls))
        assert len(calls) == 4

    run(scenario())


def test_the_cache_is_bounded_least_recently_used_first_out() -> None:
    cache: DecisionCache[int, bool] = DecisionCache(3, allow_ttl=60, deny_ttl=60, clock=Clock())
    calls: list[int] = []

    async def scenario() -> None:
        for key in (1, 2, 3):
            await cache.get(key, decide_counting(True, calls))
        await cache.get(1, decide_counting(True, calls))  # 1 is now the most recent
        await cache.get(4, decide_counting(True, calls))  # 2 goes
        assert cache.cached_keys() == [3, 1, 4]
        for key in range(100, 200):
            await cache.get(key, decide_counting(False, calls))
        assert len(cache) == 3

    run(scenario())


def test_a_burst_of_misses_makes_one_decision_and_a_failure_is_not_kept() -> None:
    cache: DecisionCache[str, bool] = DecisionCache(10, 10, 2, clock=Clock())
    calls: list[int] = []
    release = asyncio.Event()

    async def slow() -> bool:
        calls.append(1)
        await release.wait()
        return True

    async def failing() -> bool:
        calls.append(1)
        raise ApiError(503, "down")

    async def scenario() -> None:
        burst = [asyncio.ensure_future(cache.get("k", slow)) for _ in range(20)]
        await asyncio.sleep(0)
        burst[0].cancel()  # one caller going away does not cancel the others' decision
        release.set()
        results = await asyncio.gather(*burst, return_exceptions=True)
        assert results[1:] == [True] * 19 and len(calls) == 1
        with pytest.raises(ApiError):
            await cache.get("f", failing)
        with pytest.raises(ApiError):
            await cache.get("f", failing)
        assert len(calls) == 3

    run(scenario())


class Reviewer:
    """Answers reviews as an API server would, recording each request."""

    def __init__(self, audiences: list[str], allowed: set[tuple[str, str]]) -> None:
        self.audiences, self.allowed = audiences, allowed
        self.token_reviews: list[tuple[str, list[str]]] = []
        self.access_reviews: list[dict[str, Any]] = []
        self.fail: ApiError | None = None
        self.logins = 0

    async def review_token(self, token: str, audiences: list[str]) -> dict[str, Any]:
        self.token_reviews.append((token, audiences))
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        valid = [a for a in audiences if a in self.audiences]
        return {
            "authenticated": bool(valid),
            "audiences": valid,
            "user": {
                "username": "system:serviceaccount:team-a:painter",
                "uid": "u-1",
                "groups": ["system:serviceaccounts", "system:authenticated"],
                "extra": {"authentication.kubernetes.io/pod-name": ["painter-1"]},
            },
        }

    async def review_access(self, spec: dict[str, Any]) -> dict[str, Any]:
        self.access_reviews.append(spec)
        attributes = spec["resourceAttributes"]
        return {"allowed": (attributes["namespace"], attributes["name"]) in self.allowed}

    async def login(self) -> None:
        self.logins += 1


def test_identity_reviews_once_per_token_and_model_and_keeps_no_token() -> None:
    reviewer = Reviewer(["tti-gateway"], {("team-a", "stub")})
    identity = Identity(reviewer, "tti-gateway", CachePolicy(10, 2, 100), clock=Clock())

    async def scenario() -> None:
        user = await identity.authenticate(JWT)
        assert user is not None and user.username.endswith(":painter")
        assert await identity.authenticate(JWT) == user
        assert reviewer.token_reviews == [(JWT, ["tti-gateway"])]
        assert await identity.may_generate(user, "team-a", "stub")
        assert not await identity.may_generate(user, "team-b", "stub")
        assert await identity.may_generate(user, "team-a", "stub")
        assert len(reviewer.access_reviews) == 2
        assert reviewer.access_reviews[0] == {
            "user": "system:serviceaccount:team-a:painter",
            "uid": "u-1",
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/pod-name": ["painter-1"]},
            "resourceAttributes": {
                "namespace": "team-a",
                "verb": "generate",
                "group": "tti.dev",
                "resource": "texttoimagemodels",
                "name": "stub",
            },
        }
        assert await identity.authenticate("not-a-jwt") is None
        assert len(reviewer.token_reviews) == 1  # not worth asking about

    run(scenario())
    keys = identity.users.cached_keys()
    assert keys and all(JWT.encode() not in key and len(key) == 32 for key in keys)
    assert all(JWT.encode() not in key[0] for key in identity.grants.cached_keys())


def test_a_token_for_another_audience_is_no_one() -> None:
    identity = Identity(Reviewer(["other"], set()), "tti-gateway", CachePolicy(), clock=Clock())
    assert run(identity.authenticate(JWT)) is None
    # The audience must be in the answer, not only `authenticated`.
    assert authenticated_user({"authenticated": True, "user": {"username": "x"}}, "a") is None
    assert authenticated_user(
        {"authenticated": True, "audiences": ["a"], "user": {"username": "x"}}, "a"
    ) == User("x")


def test_an_api_failure_is_a_503_and_our_own_expired_login_is_renewed() -> None:
    from tti_gateway.identity import Unavailable

    reviewer = Reviewer(["tti-gateway"], set())
    identity = Identity(reviewer, "tti-gateway", CachePolicy(), clock=Clock())
    reviewer.fail = ApiError(401, "Unauthorized")
    assert run(identity.authenticate(JWT)) is not None  # logged in again, asked again
    assert reviewer.logins == 1
    identity.users = DecisionCache(10, 10, 2, clock=Clock())
    reviewer.fail = ApiError(503, "etcd is away")
    with pytest.raises(Unavailable) as unavailable:
        run(identity.authenticate(JWT))
    assert unavailable.value.status == 503 and "etcd" not in unavailable.value.details


def test_only_jwt_shaped_tokens_are_reviewed() -> None:
    assert looks_like_a_jwt(JWT)
    for token in ("plain-token", "a.b", "a.b.c.d", "a.b.c d", "a." * 3, JWT + "." + "x" * 20000):
        assert not looks_like_a_jwt(token), token


def test_an_adapter_is_called_with_its_models_permission() -> None:
    t = table(("team-a", "sdxl"), ("team-b", "secret"))
    t.set_scale(("team-a", "sdxl"), 1, False, adapters=("pixel",))
    t.set_scale(("team-b", "secret"), 1, False, adapters=("pixel",))
    team_a = caller("t namespaces=team-a")
    target = run(resolve_for(t, "sdxl/pixel", team_a))
    assert (target.model.key, target.upstream_name) == (("team-a", "sdxl"), "sdxl/pixel")
    with pytest.raises(UnknownModel, match="team-a/sdxl has no adapter 'oil'; its adapters: pixel"):
        run(resolve_for(t, "sdxl/oil", team_a))
    # Another team's model and its adapters: refused, and nothing told of what it has.
    for name in ("secret/pixel", "team-b/secret/pixel", "secret/oil", "team-b/secret/oil"):
        with pytest.raises(Forbidden) as refused:
            run(resolve_for(t, name, team_a))
        assert "pixel" not in refused.value.details.replace(name, "")
