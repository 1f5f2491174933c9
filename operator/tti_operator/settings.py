"""The operator's one settings object, read from `TTI_OPERATOR_*` environment variables."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from tti_operator.spec import Peer

#: The labels of the chart's operator and gateway pods, less the release's instance label.
CHART_OPERATOR_LABELS = {
    "app.kubernetes.io/name": "tti-operator",
    "app.kubernetes.io/component": "operator",
}
CHART_GATEWAY_LABELS = {
    "app.kubernetes.io/name": "tti-operator-gateway",
    "app.kubernetes.io/component": "gateway",
}


class OperatorSettings(BaseSettings):
    """Each field is also the environment variable `TTI_OPERATOR_<FIELD>`."""

    model_config = SettingsConfigDict(env_prefix="TTI_OPERATOR_", extra="forbid")

    server_image: str = Field(
        "tti-server:0.1.0",
        min_length=1,
        description="server image for resources without spec.image",
    )
    namespaces: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="namespaces to serve, comma-separated; empty means all namespaces",
    )
    liveness_port: int = Field(
        8081, ge=0, le=65535, description="port of kopf's liveness endpoint /healthz (0: off)"
    )
    log_format: Literal["json", "plain", "full"] = Field("json", description="log line format")
    verbose: bool = Field(False, description="debug logging")
    field_manager: str = Field(
        "tti-operator", min_length=1, description="server-side apply field manager"
    )
    status_delay_s: float = Field(
        0.5,
        ge=0,
        le=30,
        description="seconds to gather a burst of child events into one reconcile",
    )
    concurrent_reconciles: int = Field(
        1024,
        ge=1,
        le=4096,
        description="models reconciled at once (the work queue's workers; the API server is "
        "paced by the client's 16 writes in flight, not by these)",
    )
    playground: bool = Field(
        True,
        description="model servers serve the playground page at /; false sets "
        "TTI_PLAYGROUND=false in every model pod (a model's spec.env may set it back)",
    )
    max_workers: int = Field(
        0,
        ge=0,
        description="kopf's concurrent per-model workers (they only enqueue the model); "
        "0 means no limit (kopf's default)",
    )

    cache_enabled: bool = Field(
        True,
        description="fetch Hugging Face weights once per namespace into a cache claim "
        "(spec.cache.enabled overrides); false: each model pod downloads its own",
    )
    cache_storage_class: str = Field(
        "", description="storage class of cache claims; empty: the cluster's default class"
    )
    cache_size: str = Field(
        "", description="size of a cache claim; empty: the catalogue's size for the model"
    )
    adapter_cache_size: str = Field(
        "2Gi",
        pattern=r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|k|M|G|T|P)?$",
        description="size of a model's claim for its Hugging Face LoRA adapters "
        "(<model>-adapters, made while the model cache is on and it has any)",
    )
    cache_access_mode: Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"] = Field(
        "ReadWriteOnce",
        description="access mode of cache claims: ReadWriteMany lets pods on several nodes "
        "share one; with ReadWriteOnce every pod using it runs on the node that holds it",
    )
    cache_retention_s: int = Field(
        7 * 24 * 3600,
        ge=0,
        description="seconds a cache entry no model uses is kept before it is deleted "
        "(0: kept until deleted by hand)",
    )
    cache_fetch_deadline_s: int = Field(
        6 * 3600, ge=60, description="seconds a fetch Job may run before it counts as failed"
    )
    cache_fetch_resources: dict[str, dict[str, str]] = Field(
        default_factory=lambda: {
            "requests": {"cpu": "250m", "memory": "512Mi"},
            "limits": {"memory": "2Gi"},
        },
        description="the fetch Jobs' container resources (JSON in the environment): the "
        "hub client streams each file to disk, so memory stays small whatever the model",
    )
    hub_timeout_s: float = Field(
        30.0, gt=0, le=600, description="seconds a fetch waits for each answer of the hub"
    )
    hub_endpoint: str = Field(
        "",
        description="Hugging Face endpoint the fetch Jobs use (HF_ENDPOINT: a mirror or a "
        "proxy); empty: huggingface.co",
    )

    gateway_url: str = Field(
        "",
        description="the gateway's base URL; its /metrics says how many requests it holds "
        "per model (tti_gateway_held_requests); empty: no gateway",
    )
    autoscale_interval_s: float = Field(
        2.0,
        gt=0,
        le=300,
        description="seconds between two looks of the autoscaler at the models with "
        "spec.autoscaling (and the interval the mean load is taken over)",
    )
    scrape_timeout_s: float = Field(
        1.0, gt=0, le=60, description="seconds a pod's or the gateway's /metrics may take"
    )
    pod_metrics_url: str = Field(
        "http://{ip}:8080/metrics",
        pattern=r"^https?://",
        description="where a model pod's server reports its load; {ip} is the pod's IP",
    )

    network_policies: bool = Field(
        True,
        description="give each model a NetworkPolicy: its pods accept the gateway, the "
        "operator, the metrics scrapers and what spec.access allows; false: none, and the "
        "operator deletes those it made",
    )
    own_namespace: str = Field(
        "tti-system",
        min_length=1,
        description="the namespace of the operator's own pods (the chart's release namespace)",
    )
    own_pod_labels: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: dict(CHART_OPERATOR_LABELS),
        min_length=1,
        description="labels of the operator's own pods (k=v,k=v): let in to read a model "
        "pod's /metrics",
    )
    gateway_namespace: str = Field(
        "", description="the namespace of the gateway's pods; empty: the operator's own"
    )
    gateway_pod_labels: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=lambda: dict(CHART_GATEWAY_LABELS),
        min_length=1,
        description="labels of the gateway's pods (k=v,k=v): let in to a model's HTTP port",
    )
    metrics_scrapers: tuple[Peer, ...] = Field(
        (),
        description="NetworkPolicy peers (JSON: namespaceSelector, podSelector) let in to "
        "read a model pod's /metrics (its HTTP port), e.g. Prometheus; empty: none",
    )

    @field_validator("namespaces", mode="before")
    @classmethod
    def _split(cls, value: object) -> object:
        return comma_list(value)

    @field_validator("own_pod_labels", "gateway_pod_labels", mode="before")
    @classmethod
    def _labels(cls, value: object) -> object:
        return label_map(value)

    @property
    def gateway_namespace_or_own(self) -> str:
        return self.gateway_namespace or self.own_namespace


def comma_list(value: object) -> object:
    """`a, b,,c` as ["a", "b", "c"]: a list setting from one environment variable."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def label_map(value: object) -> object:
    """`k=v,k2=v2` as {"k": "v", "k2": "v2"}: labels from one environment variable."""
    if not isinstance(value, str):
        return value
    labels = {}
    for pair in filter(None, (part.strip() for part in value.split(","))):
        key, equals, label = pair.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"{pair!r} is not key=value")
        labels[key.strip()] = label.strip()
    return labels
