"""The gateway's one settings object: flags over `TTI_GATEWAY_*` variables over defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, IPvAnyNetwork, ValidationInfo, field_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from tti_contracts.settings import comma_list
from tti_http.settings import ClientLimitSettings

ModelTable = dict[str, list[str]]


def parse_models(value: object) -> object:
    """`stub=http://a:8080,http://b:8080;turbo=` (or the same as JSON) as {model: [urls]}.

    A model with no URL is known but scaled to zero: its requests are held until it has one.
    """
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.startswith("{"):
        return json.loads(text)
    table: ModelTable = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, urls = item.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"expected MODEL=URL[,URL...], got {item!r}")
        table[name.strip()] = [url.strip().rstrip("/") for url in urls.split(",") if url.strip()]
    return table


class GatewaySettings(ClientLimitSettings):
    """`hold_timeout` is flag `--hold-timeout` and variable `TTI_GATEWAY_HOLD_TIMEOUT`."""

    model_config = SettingsConfigDict(
        env_prefix="TTI_GATEWAY_", extra="forbid", validate_default=True
    )

    host: str = Field(default="0.0.0.0", description="address to listen on")
    port: int = Field(
        default=8080, ge=0, le=65535, description="HTTP port to listen on, for the clients"
    )
    metrics_port: int = Field(
        default=9090,
        ge=0,
        le=65535,
        description="port of /metrics (Prometheus, the autoscaler), apart from the clients'",
    )
    source: Literal["static", "cluster"] = Field(
        default="static",
        description="where the models come from: the --models table, or the cluster's "
        "TextToImageModels and their EndpointSlices",
    )
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="cluster source: namespaces to watch, comma-separated; empty means all",
    )
    models: Annotated[ModelTable, NoDecode] = Field(
        default_factory=dict,
        description="static source: MODEL=URL[,URL...];MODEL2=... (no URL: at zero)",
    )
    probe_interval: float = Field(
        default=1.0,
        gt=0,
        le=60,
        description="static source: seconds between /readyz probes of each endpoint",
    )
    hold_timeout: float = Field(
        default=300.0,
        gt=0,
        description="seconds a request waits for its model to have a ready pod before 503",
    )
    max_held: int = Field(
        default=100, ge=0, description="requests held per model while it starts; more get 503"
    )
    upstream_timeout: float = Field(
        default=600.0,
        gt=0,
        description="seconds a forwarded request may take before 504; for an event stream, "
        "seconds until its head (its length is bounded by --stream-idle-timeout instead)",
    )
    stream_idle_timeout: float = Field(
        default=300.0,
        gt=0,
        description="seconds an event stream (an answer of text/event-stream: a model's "
        "previews) may stay silent between two chunks before the gateway ends it",
    )
    connect_timeout: float = Field(
        default=5.0, gt=0, description="seconds to connect to a pod before trying another"
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="largest request body accepted, in bytes (413)"
    )
    retry_after: int = Field(
        default=5, ge=1, description="Retry-After, in seconds, on a 503 for a model that starts"
    )
    trusted_proxies: Annotated[list[IPvAnyNetwork], NoDecode] = Field(
        default_factory=list,
        description="addresses or networks (comma-separated) whose X-Forwarded-For, "
        "X-Forwarded-Proto, X-Forwarded-Host and Forwarded are passed on; from any other "
        "client they are dropped",
    )
    auth_tokens_file: Path | None = Field(
        default=None,
        description="static bearer tokens, one per line, each optionally scoped: "
        "TOKEN [namespaces=A,B] [models=X,Y] [name=LABEL] (a mounted Secret; read again when "
        "it changes)",
    )
    auth_tokens_poll: float = Field(
        default=2.0,
        gt=0,
        le=300,
        description="seconds between looks at --auth-tokens-file for a change",
    )
    identity: bool = Field(
        default=False,
        description="accept Kubernetes tokens for --identity-audience (TokenReview) and "
        "authorize each call with a SubjectAccessReview: verb generate on the model "
        "(texttoimagemodels, tti.dev); needs --source cluster",
    )
    identity_audience: str = Field(
        default="tti-gateway",
        min_length=1,
        description="the audience a caller's token must be meant for (its projected "
        "serviceAccountToken's audience)",
    )
    identity_allow_ttl: float = Field(
        default=10.0, ge=0, le=300, description="seconds a positive review is cached"
    )
    identity_deny_ttl: float = Field(
        default=2.0, ge=0, le=300, description="seconds a negative review is cached"
    )
    identity_cache_size: int = Field(
        default=10_000,
        ge=1,
        description="most cached reviews of each kind (tokens; calls); least recently used "
        "first out",
    )
    playground: bool = Field(
        default=True,
        description="serve the playground page at / (a picker of every model); false: / "
        "answers 404, for locked-down deployments",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="log level"
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return comma_list(value)

    @field_validator("trusted_proxies", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        return comma_list(value)

    @field_validator("models", mode="before")
    @classmethod
    def _parse_models(cls, value: object) -> object:
        return parse_models(value)

    @field_validator("identity")
    @classmethod
    def _needs_the_cluster(cls, value: bool, info: ValidationInfo) -> bool:
        if value and info.data.get("source") != "cluster":
            raise ValueError("needs --source cluster: RBAC grants models by their namespace")
        return value

    @field_validator("metrics_port")
    @classmethod
    def _apart_from_the_clients(cls, value: int, info: ValidationInfo) -> int:
        if value != 0 and value == info.data.get("port"):
            raise ValueError(f"must differ from --port ({value}): /metrics is not for clients")
        return value
