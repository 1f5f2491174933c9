"""The cluster source: the TextToImageModels and their Services' EndpointSlices, watched.

Every model the gateway serves is a `TextToImageModel` in a watched namespace (none given:
all); its pods are the endpoints of the EndpointSlices of its Service (label
`kubernetes.io/service-name=<model>`, port `http`), ready as the slice says. Nothing is
kept anywhere else: a gateway restarted lists everything again and has the same table.
The watches are the shared `tti_kube.watch.list_and_watch` (list, watch, list again after
410) over the shared client, with kopf's login (service account or kubeconfig). A model at
zero with `spec.autoscaling` is woken through its scale subresource, as `kubectl scale`
would.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from tti_contracts.api import declared_replicas, models_path
from tti_contracts.catalogue import CATALOGUE, entry, request_rules
from tti_gateway.endpoints import EndpointTable, Key, Model
from tti_kube.client import ApiError, KubeClient
from tti_kube.watch import Sink, list_and_watch

Obj = dict[str, Any]
Readiness = dict[str, bool]  # endpoint URL -> ready

SERVICE_LABEL = "kubernetes.io/service-name"
PORT_NAME = "http"
FIELD_MANAGER = "tti-gateway"

log = logging.getLogger(__name__)


# -- pure readers of the watched objects ------------------------------------------------


def slices_path(namespace: str | None) -> str:
    where = f"/namespaces/{namespace}" if namespace else ""
    return f"/apis/discovery.k8s.io/v1{where}/endpointslices"


def object_key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


@dataclass(frozen=True)
class Scale:
    """What a model's spec says about its replicas and its catalogue model (`spec.model`),
    and the version that says it."""

    replicas: int
    autoscaling: bool
    version: str = ""
    model: str = ""
    adapters: tuple[str, ...] = ()

    @property
    def rules(self) -> dict[str, object] | None:
        """What a client may ask of the model (its catalogue entry's); None for a name this
        gateway's catalogue does not know (a newer CRD)."""
        return request_rules(entry(self.model)) if self.model in CATALOGUE else None


def model_scale(model: Mapping[str, Any]) -> Scale:
    spec = model.get("spec") or {}
    return Scale(
        replicas=declared_replicas(spec),
        autoscaling=bool(spec.get("autoscaling")),
        version=str((model.get("metadata") or {}).get("resourceVersion", "")),
        model=str(spec.get("model", "")),
        adapters=adapter_names(spec),
    )


def adapter_names(spec: Mapping[str, Any]) -> tuple[str, ...]:
    """The names in spec.adapters (the API server has checked the rest)."""
    adapters = spec.get("adapters")
    if not isinstance(adapters, list):
        return ()
    named = (a.get("name") for a in adapters if isinstance(a, Mapping))
    return tuple(name for name in named if isinstance(name, str) and name)


def slice_model(endpoint_slice: Mapping[str, Any]) -> Key | None:
    """The model (namespace, Service name) whose Service the slice belongs to."""
    meta = endpoint_slice.get("metadata") or {}
    service = (meta.get("labels") or {}).get(SERVICE_LABEL)
    return (str(meta.get("namespace", "")), service) if service else None


def slice_endpoints(endpoint_slice: Mapping[str, Any]) -> Readiness:
    """Each address of the slice as a URL on its `http` port, and whether it is ready.

    An unset `conditions.ready` counts as ready, as the EndpointSlice API asks consumers to.
    """
    port = next(
        (p.get("port") for p in endpoint_slice.get("ports") or [] if p.get("name") == PORT_NAME),
        None,
    )
    if port is None:
        return {}
    readiness: Readiness = {}
    for endpoint in endpoint_slice.get("endpoints") or []:
        ready = (endpoint.get("conditions") or {}).get("ready") is not False
        for address in endpoint.get("addresses") or []:
            host = f"[{address}]" if ":" in address else address
            url = f"http://{host}:{port}"
            readiness[url] = readiness.get(url, False) or ready
    return readiness


def merged(slices: Iterable[Readiness]) -> Readiness:
    """One model's endpoints over all its slices: ready where any slice says so."""
    result: Readiness = {}
    for readiness in slices:
        for url, ready in readiness.items():
            result[url] = result.get(url, False) or ready
    return result


def in_scope(key: Key, namespace: str | None) -> bool:
    return namespace is None or key[0] == namespace


# -- the source -------------------------------------------------------------------------


def credentials() -> kopf.ConnectionInfo:
    """The pod's service account in a cluster, else the kubeconfig (KUBECONFIG), as kopf does."""
    settings = kopf.OperatorSettings()
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise ValueError(
            "--source cluster: no credentials: neither a service account (in a pod) nor a "
            "kubeconfig (KUBECONFIG or ~/.kube/config)"
        )
    return info


class Client(KubeClient):
    """The shared client, logging in again when the API server says 401: a projected
    service-account token is rotated in the pod's file, and the credentials read at start
    expire. Every watch lists first after a failure, so the list is where it shows."""

    async def login(self) -> None:
        await self.connect(credentials())

    async def list(self, path: str, params: dict[str, str]) -> Obj:
        try:
            return await super().list(path, params)
        except ApiError as error:
            if error.status == 401:
                log.info("the API server refused our credentials: logging in again")
                await self.login()
            raise


class ClusterSource:
    """Feeds the table from the watches; `table.synced` once every first list is in."""

    def __init__(self, table: EndpointTable, client: KubeClient, namespaces: Iterable[str]) -> None:
        self.table = table
        self.client = client
        self.namespaces: list[str | None] = list(namespaces) or [None]
        #: Per model: its slices by name, each slice's endpoints.
        self.slices: dict[Key, dict[str, Readiness]] = {}
        self._unlisted = 2 * len(self.namespaces)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for namespace in self.namespaces:
            self._watch(models_path(namespace), ModelSink(self, namespace), {})
            selector = {"labelSelector": SERVICE_LABEL}
            self._watch(slices_path(namespace), SliceSink(self, namespace), selector)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _watch(self, path: str, sink: Sink, params: dict[str, str]) -> None:
        first = _once(self._listed)
        watch = list_and_watch(self.client, path, params, sink, first)
        self._tasks.append(asyncio.get_running_loop().create_task(watch, name=f"watch {path}"))

    def _listed(self) -> None:
        self._unlisted -= 1
        if self._unlisted == 0:
            self.table.synced = True
            log.info("gateway table filled: %d models", len(self.table.models))

    # -- called by the sinks ------------------------------------------------------------

    def set_model(self, key: Key, scale: Scale) -> None:
        known = key in self.table.models
        self.table.set_scale(
            key,
            scale.replicas,
            scale.autoscaling,
            scale.version,
            rules=scale.rules,
            adapters=scale.adapters,
        )
        if not known:
            self.refresh(key)

    def remove_model(self, key: Key) -> None:
        self.table.remove_model(key)

    def set_slice(self, model: Key, name: str, readiness: Readiness | None) -> None:
        """The slice `name` of `model` now has these endpoints (None: it is gone)."""
        slices = self.slices.setdefault(model, {})
        if readiness is None:
            slices.pop(name, None)
        else:
            slices[name] = readiness
        if not slices:
            del self.slices[model]
        self.refresh(model)

    def refresh(self, model: Key) -> None:
        if model in self.table.models:
            self.table.set_endpoints(model, merged(self.slices.get(model, {}).values()))

    async def wake(self, model: Model) -> None:
        """Ask for one replica through the scale subresource, if the model is still the
        version seen at zero: a gateway that has not yet seen the autoscaler (or another
        gateway replica) scale it up must not set it back to one (409 instead)."""
        log.info("waking model %s: spec.replicas 0 -> 1", model.label)
        await self.client.scale(model.namespace, model.name, 1, model.version)


class ModelSink:
    """The models of one namespace (None: all) into the table."""

    def __init__(self, source: ClusterSource, namespace: str | None) -> None:
        self.source, self.namespace = source, namespace

    def listed(self, items: list[Obj]) -> None:
        listed = {object_key(item) for item in items}
        for key in [k for k in self.source.table.models if in_scope(k, self.namespace)]:
            if key not in listed:
                self.source.remove_model(key)
        for item in items:
            self.source.set_model(object_key(item), model_scale(item))

    def event(self, event_type: str, obj: Obj) -> None:
        if event_type == "DELETED":
            self.source.remove_model(object_key(obj))
        else:
            self.source.set_model(object_key(obj), model_scale(obj))


class SliceSink:
    """The EndpointSlices of one namespace (None: all) into the source's slice map."""

    def __init__(self, source: ClusterSource, namespace: str | None) -> None:
        self.source, self.namespace = source, namespace

    def listed(self, items: list[Obj]) -> None:
        listed = {(slice_model(item), object_key(item)[1]) for item in items}
        for model, slices in list(self.source.slices.items()):
            if in_scope(model, self.namespace):
                for name in [n for n in slices if (model, n) not in listed]:
                    self.source.set_slice(model, name, None)
        for item in items:
            self.event("ADDED", item)

    def event(self, event_type: str, obj: Obj) -> None:
        model = slice_model(obj)
        if model is not None:
            gone = event_type == "DELETED"
            self.source.set_slice(model, object_key(obj)[1], None if gone else slice_endpoints(obj))


def _once(action: Callable[[], None]) -> Callable[[], None]:
    """`action` on the first call only: a relist after a broken watch is not a first list."""
    done = False

    def call() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return call
