"""The TextToImageModel spec as typed Python values, with the defaults the CRD cannot express.

The API server already enforces the CRD schema and its CEL rules; parsing again here keeps
the builders typed and turns a resource that slipped past an older CRD into one clear
`InvalidSpec` instead of a KeyError deep in a handler.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from tti_contracts.api import DEFAULT_REPLICAS, GPU_ONLY_OPTIMISATIONS, ImageFormat, Optimisation
from tti_contracts.catalogue import ModelName, entry


class InvalidSpec(ValueError):
    """The resource's spec cannot be realised; the message names the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SecretKeyRef(_Strict):
    name: str = Field(min_length=1)
    key: str = Field("token", min_length=1)


class HuggingFaceSource(_Strict):
    repo: str = Field(min_length=1)
    #: A branch, tag or commit; the fetch resolves it to a commit once, and the model keeps
    #: that commit until the entry is fetched again.
    revision: str = Field("main", min_length=1)
    #: A Secret holding a hub token (gated repositories); read only by the fetch Job.
    token_secret: SecretKeyRef | None = Field(None, alias="tokenSecret")


class PvcSource(_Strict):
    claim_name: str = Field(alias="claimName", min_length=1)
    sub_path: str = Field("", alias="subPath")


class HostPathSource(_Strict):
    path: str = Field(pattern=r"^/")


class Source(_Strict):
    hugging_face: HuggingFaceSource | None = Field(None, alias="huggingFace")
    pvc: PvcSource | None = Field(None, alias="persistentVolumeClaim")
    host_path: HostPathSource | None = Field(None, alias="hostPath")

    @model_validator(mode="after")
    def _exactly_one(self) -> Source:
        if sum(x is not None for x in (self.hugging_face, self.pvc, self.host_path)) != 1:
            raise ValueError("set exactly one of huggingFace, persistentVolumeClaim, hostPath")
        return self


#: An adapter's name, as requests spell it after the model's (`MODEL/ADAPTER`).
ADAPTER_NAME = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
MAX_ADAPTERS = 16


def relative_path(path: str) -> str:
    """A path inside a volume or a repository: nothing above it, nothing absolute."""
    if path.startswith("/") or ".." in path.split("/"):
        raise ValueError(f"{path!r} must be a relative path without '..'")
    return path


def absolute_path(path: str) -> str:
    if not path.startswith("/") or ".." in path.split("/"):
        raise ValueError(f"{path!r} must be an absolute path without '..'")
    return path


class HuggingFaceFile(_Strict):
    """One file of a hub repository (an adapter's weights)."""

    repo: str = Field(min_length=1)
    file: str = Field(min_length=1)
    revision: str = Field("main", min_length=1)
    token_secret: SecretKeyRef | None = Field(None, alias="tokenSecret")

    _file = field_validator("file")(relative_path)


class AdapterPvc(_Strict):
    claim_name: str = Field(alias="claimName", min_length=1)
    path: str = ""

    _path = field_validator("path")(relative_path)


class AdapterHostPath(_Strict):
    path: str

    _path = field_validator("path")(absolute_path)


class AdapterSource(_Strict):
    hugging_face: HuggingFaceFile | None = Field(None, alias="huggingFace")
    pvc: AdapterPvc | None = None
    host_path: AdapterHostPath | None = Field(None, alias="hostPath")

    @model_validator(mode="after")
    def _exactly_one(self) -> AdapterSource:
        if sum(x is not None for x in (self.hugging_face, self.pvc, self.host_path)) != 1:
            raise ValueError("set exactly one of huggingFace, pvc, hostPath")
        return self


class Adapter(_Strict):
    """One entry of `spec.adapters`: a LoRA adapter the model's pods load by name."""

    name: str = Field(min_length=1, max_length=40, pattern=ADAPTER_NAME)
    scale: float = Field(1.0, ge=0, le=4)
    source: AdapterSource


AccessMode = Literal["ReadWriteOnce", "ReadWriteMany", "ReadWriteOncePod"]


class ModelCache(_Strict):
    """`spec.cache`: where hub weights are kept; each unset field takes the operator's default."""

    enabled: bool | None = None
    storage_class_name: str | None = Field(None, alias="storageClassName")
    size: str | None = Field(None, min_length=1)
    access_mode: AccessMode | None = Field(None, alias="accessMode")


class Toleration(_Strict):
    key: str | None = None
    operator: Literal["Exists", "Equal"] | None = None
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    toleration_seconds: int | None = Field(None, alias="tolerationSeconds")


class EnvVar(_Strict):
    name: str = Field(min_length=1)
    value: str | None = None
    value_from: dict[str, Any] | None = Field(None, alias="valueFrom")


class Resources(_Strict):
    requests: dict[str, int | str] = Field(default_factory=dict)
    limits: dict[str, int | str] = Field(default_factory=dict)


class Autoscaling(_Strict):
    """`spec.autoscaling`: the bounds and the target the autoscaler scales the replicas by.

    The defaults are the CRD's (an image request takes seconds, so a replica aims at a few
    requests at once; scaling to zero costs a cold start, so it is opt-in with min 0).
    """

    min_replicas: int = Field(1, alias="minReplicas", ge=0)
    max_replicas: int = Field(alias="maxReplicas", ge=1)
    target_in_flight: float = Field(2.0, alias="targetInFlight", gt=0)
    scale_down_delay_s: int = Field(300, alias="scaleDownDelaySeconds", ge=0)

    @model_validator(mode="after")
    def _max_at_least_min(self) -> Autoscaling:
        if self.max_replicas < self.min_replicas:
            raise ValueError("maxReplicas must be at least minReplicas")
        return self


class SelectorRequirement(_Strict):
    """One `matchExpressions` entry of a label selector, as Kubernetes defines it."""

    key: str = Field(min_length=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _values_fit_the_operator(self) -> SelectorRequirement:
        if self.operator in ("In", "NotIn") and not self.values:
            raise ValueError(f"{self.operator} needs values")
        if self.operator in ("Exists", "DoesNotExist") and self.values:
            raise ValueError(f"{self.operator} takes no values")
        return self


class LabelSelector(_Strict):
    """A Kubernetes label selector; empty, it selects everything."""

    match_labels: dict[str, str] = Field(default_factory=dict, alias="matchLabels")
    match_expressions: tuple[SelectorRequirement, ...] = Field((), alias="matchExpressions")


class Peer(_Strict):
    """Pods allowed to call a model, as a NetworkPolicy peer: those of the namespaces
    `namespaceSelector` picks (unset: the model's own namespace), narrowed to those
    `podSelector` picks (unset: every one)."""

    namespace_selector: LabelSelector | None = Field(None, alias="namespaceSelector")
    pod_selector: LabelSelector | None = Field(None, alias="podSelector")

    @model_validator(mode="after")
    def _selects_something(self) -> Peer:
        if self.namespace_selector is None and self.pod_selector is None:
            raise ValueError("set namespaceSelector, podSelector or both")
        return self

    def as_peer(self) -> dict[str, Any]:
        """The NetworkPolicy peer (an empty selector stays: it means "every")."""
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)


#: Who may call a model directly when its spec does not say: every pod of its own namespace
#: (a caikit client beside the model keeps working); other namespaces go through the gateway.
OWN_NAMESPACE = (Peer.model_validate({"podSelector": {}}),)


class Access(_Strict):
    """`spec.access`: who may call the model's Service (8080, 8085) besides the gateway and
    the operator. `from` unset: the model's own namespace; `from: []`: nobody else."""

    from_: tuple[Peer, ...] | None = Field(None, alias="from", max_length=32)


class ModelSpec(_Strict):
    """`spec` of a TextToImageModel, field names as in the CRD."""

    model: ModelName
    gpus_field: int | None = Field(None, alias="gpus", ge=0)
    image_format: ImageFormat = Field("png", alias="imageFormat")
    replicas: int = Field(DEFAULT_REPLICAS, ge=0)
    autoscaling: Autoscaling | None = None
    source: Source | None = None
    cache: ModelCache = Field(default_factory=lambda: ModelCache.model_validate({}))
    image: str | None = Field(None, min_length=1)
    max_batch_size: int | None = Field(None, alias="maxBatchSize", ge=1, le=64)
    batch_wait_ms: int | None = Field(None, alias="batchWaitMs", ge=0, le=1000)
    resources: Resources = Field(default_factory=Resources)
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    tolerations: tuple[Toleration, ...] = ()
    env: tuple[EnvVar, ...] = ()
    access: Access = Field(default_factory=lambda: Access.model_validate({}))
    adapters: tuple[Adapter, ...] = Field((), max_length=MAX_ADAPTERS)
    optimisation: Optimisation = "none"

    @field_validator("adapters")
    @classmethod
    def _unique_names(cls, adapters: tuple[Adapter, ...]) -> tuple[Adapter, ...]:
        names = [adapter.name for adapter in adapters]
        if twice := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"names must be unique: {', '.join(twice)} more than once")
        return adapters

    @model_validator(mode="after")
    def _fields_agree(self) -> ModelSpec:
        refused = [rule for rule in CROSS_FIELD_RULES if rule.broken(self)]
        if refused:
            # A model validator's own errors are placed at the model; these name the field.
            details = [
                InitErrorDetails(
                    type=PydanticCustomError("cross_field", rule.message),
                    loc=(rule.field,),
                    input=self,
                )
                for rule in refused
            ]
            raise ValidationError.from_exception_data(type(self).__name__, details)
        return self

    @property
    def callers(self) -> tuple[Peer, ...]:
        """Who may call the model directly (besides the gateway and the operator)."""
        return OWN_NAMESPACE if self.access.from_ is None else self.access.from_

    @property
    def gpus(self) -> int:
        """GPUs per replica with the per-model default applied."""
        return entry(self.model).default_gpus if self.gpus_field is None else self.gpus_field

    @property
    def effective_source(self) -> Source | None:
        """The explicit source, else the model's default Hugging Face repository."""
        if self.source is not None:
            return self.source
        repo = entry(self.model).default_repo
        return Source.model_validate({"huggingFace": {"repo": repo}}) if repo else None


@dataclass(frozen=True)
class CrossFieldRule:
    """A rule between fields of the spec, refused at `spec.<field>`. The CRD states each as a
    CEL rule with the same field and the message `spec.<field> <message>`, so the API server
    and the operator refuse alike (tests/operator/test_operator_crd.py holds them together)."""

    #: The field as the CRD spells it (the error's path and the CEL rule's fieldPath).
    field: str
    broken: Callable[[ModelSpec], bool]
    message: str


CROSS_FIELD_RULES = (
    # CUDA graphs replay recorded GPU work: a CPU pod has nothing to record.
    CrossFieldRule(
        "optimisation",
        lambda spec: spec.optimisation in GPU_ONLY_OPTIMISATIONS and spec.gpus == 0,
        "compile-cudagraphs needs a GPU (spec.gpus >= 1); use compile on a CPU model",
    ),
    # The compiled graphs are of the base weights; an adapter changes them.
    CrossFieldRule(
        "adapters",
        lambda spec: spec.optimisation != "none" and bool(spec.adapters),
        "need spec.optimisation none: compiled graphs are of the base model",
    ),
)


def parse_spec(spec: Mapping[str, Any]) -> ModelSpec:
    """Parse a raw spec; the error message names the offending field as `spec.<path>`."""
    try:
        return ModelSpec.model_validate(dict(spec))
    except ValidationError as error:
        first = error.errors()[0]
        path = ".".join(str(part) for part in ("spec", *first["loc"]))
        raise InvalidSpec(f"{path}: {first['msg']}") from None
