"""LoRA adapters (`spec.adapters`): where each adapter's file comes from, the manifest the
model's pods read, and the `AdaptersReady` condition. Pure: the I/O is the reconciler's.

Every model has a ConfigMap `<model>-adapters` whose `adapters.json` lists the adapters
whose file is there (LORA.md's contract with the server), and every model pod mounts it at
`/etc/tti/adapters`, with or without adapters: adding, removing or rescaling one changes
only the ConfigMap, and the server applies it live. Files come from

- a Hugging Face repository with the model cache on: one fetch Job per file (the weights'
  Job shape, `tti-server download --file`) into the model's claim `<model>-adapters`,
  mounted read-only at `/adapters`; the commit it found is written on the Job (annotation),
  which stays while the adapter does;
- a Hugging Face repository with the cache off: the server fetches it (repo, file, revision
  in the manifest);
- a claim or a host path: a read-only volume `adapter-<name>` at `/adapter-sources/<name>`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tti_operator.ownership import MANAGED_BY, MANAGED_BY_LABEL
from tti_operator.settings import OperatorSettings
from tti_operator.spec import Adapter, HuggingFaceFile, ModelSpec
from tti_operator.weights import (
    COMMIT,
    LAST_ERROR,
    RETRY_AT,
    TOKEN_PATH,
    CacheStorage,
    Fetch,
    cache_storage,
    quantity_bytes,
)

Obj = dict[str, Any]

#: Where every model pod reads the manifest (a ConfigMap volume without subPath, so the
#: kubelet swaps the file when the ConfigMap changes).
MANIFEST_DIR = "/etc/tti/adapters"
MANIFEST_KEY = "adapters.json"
MANIFEST_PATH = f"{MANIFEST_DIR}/{MANIFEST_KEY}"
#: The model's adapter claim: written by the fetch Jobs, read-only in the model's pods.
CACHE_MOUNT = "/adapters"
#: Where a pvc or hostPath adapter is mounted, one folder per adapter.
SOURCES_DIR = "/adapter-sources"
#: On an adapter's fetch pods (not the model's labels: they are no model pods).
ADAPTER_OF_LABEL = "tti.dev/adapter-of"
FETCH_COMPONENT = "adapter-fetch"
#: How the server reports its adapters: one log line, the last of which is the state now.
STATE_LINE = "tti_server.adapters: state "
NAME_LIMIT = 63


def resource_name(model: str) -> str:
    """The ConfigMap holding the manifest, and the claim holding fetched files."""
    return f"{model}-adapters"


def job_name(model: str, hub: HuggingFaceFile) -> str:
    """The fetch Job of one file: the same file keeps its Job (and its commit) across
    renames and rescales; cut to a valid name (it becomes the pods' `job-name` label)."""
    key = json.dumps([hub.repo, hub.file, hub.revision])
    suffix = f"-adapter-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    return model[: NAME_LIMIT - len(suffix)].rstrip("-") + suffix


def cache_of(spec: ModelSpec, settings: OperatorSettings) -> CacheStorage | None:
    """The storage of the model's adapter claim; None: no claim (no hub adapter, or the
    model cache is off, and the server fetches hub adapters itself)."""
    storage = cache_storage(spec, settings)
    if not storage.enabled or not any(a.source.hugging_face for a in spec.adapters):
        return None
    return CacheStorage(
        enabled=True,
        storage_class_name=storage.storage_class_name,
        size=settings.adapter_cache_size,
        access_mode=storage.access_mode,
    )


# -- what a fetch Job says -------------------------------------------------------------------


@dataclass(frozen=True)
class FetchJobState:
    """An adapter's fetch Job, and what the operator wrote on it of its pod's outcome."""

    uid: str
    active: int
    succeeded: bool
    failed: bool
    commit: str
    error: str
    retry_at: str

    @property
    def done(self) -> bool:
        return self.succeeded and bool(self.commit)


def fetch_job_state(obj: Mapping[str, Any]) -> FetchJobState:
    meta = obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    status = obj.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return FetchJobState(
        uid=str(meta.get("uid", "")),
        active=int(status.get("active") or 0),
        succeeded=conditions.get("Complete") == "True",
        failed=conditions.get("Failed") == "True",
        commit=str(annotations.get(COMMIT, "")),
        error=str(annotations.get(LAST_ERROR, "")),
        retry_at=str(annotations.get(RETRY_AT, "")),
    )


#: The model's fetch Jobs as the informer shows them, by name.
Fetches = Mapping[str, FetchJobState]


def fetch_args(hub: HuggingFaceFile, storage: CacheStorage, timeout_s: float) -> list[str]:
    args = ["download", hub.repo, "--revision", hub.revision, "--file", hub.file]
    args += ["--cache-dir", CACHE_MOUNT, "--room", str(quantity_bytes(storage.size))]
    args += ["--timeout", f"{timeout_s:g}"]
    if hub.token_secret is not None:
        args += ["--token-file", f"{TOKEN_PATH}/{hub.token_secret.key}"]
    # The last JSON line (`done` or `failed`) becomes the pod's termination message.
    return [*args, "--status-file", "/dev/termination-log"]


def adapter_fetch(
    model: str, hub: HuggingFaceFile, storage: CacheStorage, settings: OperatorSettings
) -> Fetch:
    """What the fetch Job of one hub adapter runs, into the model's adapter claim."""
    return Fetch(
        claim=resource_name(model),
        volume="adapters",
        mount_path=CACHE_MOUNT,
        args=fetch_args(hub, storage, settings.hub_timeout_s),
        token=hub.token_secret,
        pod_labels={
            MANAGED_BY_LABEL: MANAGED_BY,
            "app.kubernetes.io/component": FETCH_COMPONENT,
            ADAPTER_OF_LABEL: model,
        },
    )


def fetched_path(hub: HuggingFaceFile, commit: str) -> str:
    """The file in a model pod: huggingface_hub's cache layout, as the Job wrote it."""
    folder = f"models--{hub.repo.replace('/', '--')}"
    return f"{CACHE_MOUNT}/hub/{folder}/snapshots/{commit}/{hub.file}"


# -- the manifest ----------------------------------------------------------------------------


def source_path(adapter: Adapter) -> str | None:
    """Where a pvc or hostPath adapter's file is in the pod (None: a hub adapter)."""
    mount = f"{SOURCES_DIR}/{adapter.name}"
    if adapter.source.pvc is not None:
        return f"{mount}/{adapter.source.pvc.path}".rstrip("/")
    if adapter.source.host_path is not None:
        return mount  # the host path itself is mounted there, file or folder
    return None


def manifest_entry(
    model: str, adapter: Adapter, cached: bool, fetches: Fetches
) -> dict[str, Any] | None:
    """The adapter's line in the manifest; None while its file is not there yet."""
    entry: dict[str, Any] = {"name": adapter.name, "scale": adapter.scale}
    hub = adapter.source.hugging_face
    if hub is None:
        return {**entry, "path": source_path(adapter)}
    if not cached:
        return {**entry, "repo": hub.repo, "file": hub.file, "revision": hub.revision}
    job = fetches.get(job_name(model, hub))
    if job is None or not job.done:
        return None
    return {**entry, "path": fetched_path(hub, job.commit)}


def manifest(model: str, spec: ModelSpec, settings: OperatorSettings, fetches: Fetches) -> Obj:
    cached = cache_of(spec, settings) is not None
    entries = (manifest_entry(model, a, cached, fetches) for a in spec.adapters)
    return {"adapters": sorted((e for e in entries if e), key=lambda e: str(e["name"]))}


def manifest_json(model: str, spec: ModelSpec, settings: OperatorSettings, fetches: Fetches) -> str:
    """`adapters.json`: deterministic, so the same input is the same ConfigMap."""
    return json.dumps(manifest(model, spec, settings, fetches), sort_keys=True, indent=1) + "\n"


# -- the pod's volumes -----------------------------------------------------------------------


def volumes(model: str, spec: ModelSpec, settings: OperatorSettings) -> tuple[list[Obj], list[Obj]]:
    """The manifest (always), the adapter claim (hub adapters with the cache on) and one
    volume per pvc or hostPath adapter, all read-only. They depend on the spec only, never
    on a fetch: a fetched file changes the ConfigMap, not the pods."""
    vols: list[Obj] = [{"name": "adapters-manifest", "configMap": {"name": resource_name(model)}}]
    mounts: list[Obj] = [{"name": "adapters-manifest", "mountPath": MANIFEST_DIR, "readOnly": True}]
    if cache_of(spec, settings) is not None:
        claim = {"claimName": resource_name(model), "readOnly": True}
        vols.append({"name": "adapters", "persistentVolumeClaim": claim})
        mounts.append({"name": "adapters", "mountPath": CACHE_MOUNT, "readOnly": True})
    for adapter in sorted(spec.adapters, key=lambda a: a.name):
        name, source = f"adapter-{adapter.name}", adapter.source
        if source.pvc is not None:
            claim = {"claimName": source.pvc.claim_name, "readOnly": True}
            vols.append({"name": name, "persistentVolumeClaim": claim})
        elif source.host_path is not None:
            vols.append({"name": name, "hostPath": {"path": source.host_path.path}})
        else:
            continue
        mount = f"{SOURCES_DIR}/{adapter.name}"
        mounts.append({"name": name, "mountPath": mount, "readOnly": True})
    return vols, mounts


# -- what the server says --------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """One adapter as the server last reported it."""

    state: str  # loading, loaded, refused
    reason: str = ""


def served_states(log: str) -> dict[str, Served] | None:
    """The server's last `tti_server.adapters: state {...}` line; None: no such line."""
    for line in reversed(log.splitlines()):
        _, found, rest = line.partition(STATE_LINE)
        if not found:
            continue
        try:
            states = json.loads(rest)
        except ValueError:
            continue
        if isinstance(states, dict):
            return {
                str(name): Served(str(s.get("state", "")), str(s.get("reason", "")))
                for name, s in states.items()
                if isinstance(s, dict)
            }
    return None


# -- the condition ---------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptersState:
    """The `AdaptersReady` condition of a model with adapters."""

    reason: str  # Loaded, FetchFailed, AdapterRefused, Fetching, Loading
    message: str

    @property
    def ready(self) -> bool:
        return self.reason == "Loaded"


def _listed(names: list[str]) -> str:
    return ", ".join(names)


def adapters_state(
    model: str,
    spec: ModelSpec,
    settings: OperatorSettings,
    fetches: Fetches,
    served: Mapping[str, Served] | None,
) -> AdaptersState | None:
    """Where the model's adapters stand, from its fetch Jobs and its server's last report
    (`served`, None: no ready pod has said yet); None for a model without adapters. A
    failure outranks a wait: it needs someone to act."""
    if not spec.adapters:
        return None
    cached = cache_of(spec, settings) is not None
    failed, fetching, listed = [], [], []
    for adapter in spec.adapters:
        hub = adapter.source.hugging_face
        job = fetches.get(job_name(model, hub)) if cached and hub else None
        if manifest_entry(model, adapter, cached, fetches) is not None:
            listed.append(adapter.name)
        elif hub is not None and job is not None and (job.failed or job.error):
            said = job.error or "the fetch Job failed"
            where = f"{hub.repo}/{hub.file}@{hub.revision}"
            failed.append(f"adapter {adapter.name} ({where}): {said}")
        else:
            fetching.append(adapter.name)
    if failed:
        return AdaptersState("FetchFailed", "; ".join(failed))
    states = served or {}
    refused = [
        f"adapter {name} refused: {states[name].reason or 'no reason given'}"
        for name in listed
        if name in states and states[name].state == "refused"
    ]
    if refused:
        return AdaptersState("AdapterRefused", "; ".join(refused))
    if fetching:
        return AdaptersState("Fetching", f"fetching {_listed(fetching)}")
    waiting = [name for name in listed if name not in states or states[name].state != "loaded"]
    if waiting and served is None:
        return AdaptersState("Loading", f"waiting for a ready pod to load {_listed(waiting)}")
    if waiting:
        return AdaptersState("Loading", f"loading {_listed(waiting)}")
    count = len(listed)
    return AdaptersState("Loaded", f"{count} adapter{'' if count == 1 else 's'} loaded")
