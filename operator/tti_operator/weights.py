"""The model cache: Hugging Face weights fetched once per namespace, kept in a claim of their own.

A model whose weights come from the hub names a cache entry: its repository, revision and
weight variant. The entry is a PersistentVolumeClaim (`tti-weights-<hash>`) that no model
owns, so deleting a model leaves it for the next one, and a Job of the same name, owned by
the claim, that runs `tti-server download` into it once. Every model naming the same entry
in the namespace mounts the same claim read-only, at the commit the Job resolved, with the
hub switched off (`HF_HUB_OFFLINE=1`).

Everything here is pure: the entry a spec names, the claim and the Job to apply, what the
watched claim, Job and pod say (their summaries), and the one `WeightsState` a model's
status and its Deployment are built from. The I/O is `cache.WeightsCache`'s.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tti_contracts.catalogue import entry as catalogue_entry
from tti_operator.ownership import MANAGED_BY, MANAGED_BY_LABEL
from tti_operator.podsecurity import container_security_context, pod_security_context
from tti_operator.settings import OperatorSettings
from tti_operator.spec import ModelSpec, SecretKeyRef

Obj = dict[str, Any]

#: On the claim, the Job and the Job's pod: the name of the entry they make up.
ENTRY_LABEL = "tti.dev/weights"
COMPONENT = "model-cache"
#: The claim's annotations: what it holds (set at creation) and what the fetch found.
REPO = "tti.dev/repo"
REVISION = "tti.dev/revision"
VARIANT = "tti.dev/variant"
COMMIT = "tti.dev/commit"
BYTES = "tti.dev/bytes"
#: Fetches that failed since the last success, the last one's error, and when the next may
#: start (RFC 3339).
FAILURES = "tti.dev/failures"
LAST_ERROR = "tti.dev/last-error"
RETRY_AT = "tti.dev/retry-at"
#: Since when no model of the namespace has named the entry (RFC 3339); see `expired`.
UNUSED_SINCE = "tti.dev/unused-since"

#: Where the claim is mounted, in the fetch Job (read-write) and in model pods (read-only).
MOUNT_PATH = "/weights"
TOKEN_PATH = "/var/run/secrets/tti/hf-token"
#: Seconds before a failed fetch runs again: doubling from the first, up to the last.
RETRY_DELAYS_S = (30, 60, 120, 300, 600, 1800)


#: A claim's size when neither the resource, the operator nor the catalogue names one.
FALLBACK_SIZE = "50Gi"


@dataclass(frozen=True)
class CacheStorage:
    """Where an entry is kept: `spec.cache` over the operator's settings over the catalogue."""

    enabled: bool
    storage_class_name: str
    size: str
    access_mode: str


def cache_storage(spec: ModelSpec, settings: OperatorSettings) -> CacheStorage:
    own = spec.cache
    size = settings.cache_size or catalogue_entry(spec.model).cache_size or FALLBACK_SIZE
    return CacheStorage(
        enabled=settings.cache_enabled if own.enabled is None else own.enabled,
        storage_class_name=(
            settings.cache_storage_class
            if own.storage_class_name is None
            else own.storage_class_name
        ),
        size=own.size or size,
        access_mode=own.access_mode or settings.cache_access_mode,
    )


@dataclass(frozen=True)
class Entry:
    """One cache entry: what is fetched, where, and with which token."""

    namespace: str
    repo: str
    revision: str
    #: The weight variant the pods load (`fp16` on a GPU), or None for the plain weights.
    variant: str | None
    storage: CacheStorage
    #: Not part of the entry's identity: the same files, whoever may read them.
    token: SecretKeyRef | None = None

    @property
    def name(self) -> str:
        key = json.dumps([self.repo, self.revision, self.variant])
        return f"tti-weights-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def entry_for(namespace: str, spec: ModelSpec, settings: OperatorSettings) -> Entry | None:
    """The cache entry a model's weights come from; None: not from the hub, or no cache."""
    source = spec.effective_source
    hub = source.hugging_face if source is not None else None
    storage = cache_storage(spec, settings)
    if hub is None or not storage.enabled:
        return None
    return Entry(
        namespace=namespace,
        repo=hub.repo,
        revision=hub.revision,
        # As the server loads them: half precision on a GPU, full on the CPU.
        variant="fp16" if spec.gpus > 0 else None,
        storage=storage,
        token=hub.token_secret,
    )


def _repo_folder(repo: str) -> str:
    """huggingface_hub's folder name for a repository, which the server's `tti/` tree shares."""
    return "models--" + repo.replace("/", "--")


def snapshot_path(entry: Entry, commit: str) -> str:
    """The pipeline's folder in a model pod: huggingface_hub's cache layout, as fetched."""
    return f"{MOUNT_PATH}/hub/{_repo_folder(entry.repo)}/snapshots/{commit}"


def artefacts_path(entry: Entry, commit: str) -> str:
    """The commit's artefacts folder (compiled graphs made for exactly these weights),
    relative to the claim's root: a mount's subPath. The server's layout
    (server/tti_server/weights.py); the fetch makes the folder before it marks the entry
    complete, so it is there for every pod that mounts a cached entry."""
    return f"tti/{_repo_folder(entry.repo)}/{commit}/artefacts"


# -- what is applied ---------------------------------------------------------------------


def _metadata(entry: Entry) -> Obj:
    return {
        "name": entry.name,
        "namespace": entry.namespace,
        "labels": {
            MANAGED_BY_LABEL: MANAGED_BY,
            "app.kubernetes.io/component": COMPONENT,
            ENTRY_LABEL: entry.name,
        },
    }


def build_claim(entry: Entry) -> Obj:
    """The entry's claim: no owner, so it outlives the models that use it."""
    metadata = _metadata(entry)
    metadata["annotations"] = {REPO: entry.repo, REVISION: entry.revision}
    if entry.variant:
        metadata["annotations"][VARIANT] = entry.variant
    spec: Obj = {
        "accessModes": [entry.storage.access_mode],
        "resources": {"requests": {"storage": entry.storage.size}},
    }
    if entry.storage.storage_class_name:
        spec["storageClassName"] = entry.storage.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": metadata, "spec": spec}


#: Kubernetes quantity suffixes, as multiples of a byte.
_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15,
          "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}  # fmt: skip


def quantity_bytes(quantity: str) -> int:
    """`24Gi` as bytes (the CRD's pattern admits only these forms)."""
    number = quantity.rstrip("kMGTPi")
    return int(float(number) * _UNITS[quantity[len(number) :]])


def fetch_args(entry: Entry, timeout_s: float) -> list[str]:
    args = ["download", entry.repo, "--revision", entry.revision, "--cache-dir", MOUNT_PATH]
    # The claim's size: a volume that does not enforce it (a host path) still refuses more.
    args += ["--room", str(quantity_bytes(entry.storage.size)), "--timeout", f"{timeout_s:g}"]
    if entry.variant:
        args += ["--variant", entry.variant]
    if entry.token is not None:
        args += ["--token-file", f"{TOKEN_PATH}/{entry.token.key}"]
    # The last JSON line (`done` or `failed`) becomes the pod's termination message.
    return [*args, "--status-file", "/dev/termination-log"]


def build_fetch_job(entry: Entry, claim_uid: str, settings: OperatorSettings) -> Obj:
    """The Job that fills the claim once; owned by the claim, so it goes with it."""
    metadata = _metadata(entry)
    metadata["ownerReferences"] = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "name": entry.name,
            "uid": claim_uid,
            "controller": True,
            "blockOwnerDeletion": False,
        }
    ]
    fetch = Fetch(
        claim=entry.name,
        volume="weights",
        mount_path=MOUNT_PATH,
        args=fetch_args(entry, settings.hub_timeout_s),
        token=entry.token,
        pod_labels=dict(metadata["labels"]),
    )
    return fetch_job(metadata, fetch, settings)


@dataclass(frozen=True)
class Fetch:
    """What a fetch Job's pod runs and where it writes: `tti-server ARGS` into CLAIM."""

    claim: str
    #: The claim's volume name in the pod ("weights", "adapters").
    volume: str
    mount_path: str
    args: list[str]
    token: SecretKeyRef | None
    pod_labels: dict[str, str]


def fetch_job(metadata: Obj, fetch: Fetch, settings: OperatorSettings) -> Obj:
    """A Job running one `tti-server download` into a claim mounted read-write, the hub
    token (if any) as a file: the weights' fetch and the adapters' alike."""
    volumes: list[Obj] = [
        {"name": fetch.volume, "persistentVolumeClaim": {"claimName": fetch.claim}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    mounts: list[Obj] = [
        {"name": fetch.volume, "mountPath": fetch.mount_path},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if fetch.token is not None:
        # A file, not an environment variable: nothing prints it, and no pod spec holds it.
        secret = {
            "secretName": fetch.token.name,
            "items": [{"key": fetch.token.key, "path": fetch.token.key}],
        }
        volumes.append({"name": "hf-token", "secret": {**secret, "defaultMode": 0o400}})
        mounts.append({"name": "hf-token", "mountPath": TOKEN_PATH, "readOnly": True})
    # The hub client keeps its own scratch (a chunk cache, locks) under HF_HOME: not the claim.
    env = [
        {"name": "HOME", "value": "/tmp"},
        {"name": "HF_HOME", "value": "/tmp/hf"},
        {"name": "HF_HUB_DISABLE_TELEMETRY", "value": "1"},
    ]
    if settings.hub_endpoint:
        env.append({"name": "HF_ENDPOINT", "value": settings.hub_endpoint})
    container: Obj = {
        "name": "fetch",
        "image": settings.server_image,
        "imagePullPolicy": "IfNotPresent",
        "args": fetch.args,
        "env": env,
        "resources": settings.cache_fetch_resources,
        "securityContext": container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    pod: Obj = {
        "metadata": {"labels": dict(fetch.pod_labels)},
        "spec": {
            "restartPolicy": "Never",
            "containers": [container],
            "volumes": volumes,
            "securityContext": pod_security_context(),
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        # One pod at a time; the operator retries a failed Job with its own, longer backoff.
        # A download that stalls part-way is ended here; the client's own retries are long.
        "spec": {
            "backoffLimit": 1,
            "activeDeadlineSeconds": settings.cache_fetch_deadline_s,
            "template": pod,
        },
    }


# -- what is watched -----------------------------------------------------------------------


@dataclass(frozen=True)
class ClaimState:
    uid: str
    phase: str  # Pending, Bound, Lost
    annotations: Mapping[str, str]

    @property
    def commit(self) -> str:
        return self.annotations.get(COMMIT, "")

    @property
    def failures(self) -> int:
        value = self.annotations.get(FAILURES, "0")
        return int(value) if value.isdigit() else 0


@dataclass(frozen=True)
class JobState:
    uid: str
    active: int
    succeeded: bool
    failed: bool


@dataclass(frozen=True)
class FetchPodState:
    name: str
    phase: str
    #: The container's termination message: the download's last JSON line.
    result: Mapping[str, Any] | None
    #: Why it cannot run (unschedulable, an unbound claim, an image it cannot pull).
    waiting: str


def claim_state(obj: Mapping[str, Any]) -> ClaimState:
    meta = obj.get("metadata") or {}
    return ClaimState(
        uid=str(meta.get("uid", "")),
        phase=str((obj.get("status") or {}).get("phase", "Pending")),
        annotations=dict(meta.get("annotations") or {}),
    )


def job_state(obj: Mapping[str, Any]) -> JobState:
    status = obj.get("status") or {}
    conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or []}
    return JobState(
        uid=str((obj.get("metadata") or {}).get("uid", "")),
        active=int(status.get("active") or 0),
        succeeded=conditions.get("Complete") == "True",
        failed=conditions.get("Failed") == "True",
    )


def fetch_pod_state(obj: Mapping[str, Any]) -> FetchPodState:
    status = obj.get("status") or {}
    result: Mapping[str, Any] | None = None
    waiting = ""
    for container in status.get("containerStatuses") or []:
        state = container.get("state") or {}
        if "terminated" in state:
            result = _outcome(state["terminated"])
        elif "waiting" in state and state["waiting"].get("reason") not in (
            None,
            "ContainerCreating",
        ):
            waiting = f"{state['waiting'].get('reason')}: {state['waiting'].get('message', '')}"
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            waiting = str(condition.get("message") or condition.get("reason") or "")
    return FetchPodState(
        name=str((obj.get("metadata") or {}).get("name", "")),
        phase=str(status.get("phase", "Pending")),
        result=result,
        waiting=waiting.strip().rstrip(":"),
    )


def _outcome(terminated: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """How the fetch ended: its last JSON line; else, for a container that failed before
    it could say (a bad argument, an image without the command), its last line of output."""
    message = str(terminated.get("message") or "")
    found = _last_json_line(message)
    if found is not None or not terminated.get("exitCode"):
        return found
    lines = [line for line in message.strip().splitlines() if line.strip()]
    said = lines[-1] if lines else str(terminated.get("reason") or "failed")
    return {"event": "failed", "message": f"exit code {terminated['exitCode']}: {said}"}


def _last_json_line(text: str) -> Mapping[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


# -- what a model is told ------------------------------------------------------------------


@dataclass(frozen=True)
class WeightsState:
    """The `WeightsReady` condition of a model whose weights come from the cache."""

    reason: str  # Cached, Pending, Downloading, DownloadFailed
    message: str
    commit: str = ""

    @property
    def ready(self) -> bool:
        return self.reason == "Cached"


@dataclass(frozen=True)
class Weights:
    """A model's cache entry and where it stands: what its pods are built from."""

    entry: Entry
    state: WeightsState

    @property
    def applied_as(self) -> tuple[str, str]:
        """What the model's pods depend on: a new commit (or the first) rolls them out."""
        return (self.entry.name, self.state.commit)


def weights_state(
    entry: Entry,
    claim: ClaimState | None,
    job: JobState | None,
    pods: list[FetchPodState],
    progress: Mapping[str, Any] | None,
) -> WeightsState:
    """What the entry's objects say, in the words a model's status uses."""
    where = f"{entry.repo}@{entry.revision} (claim {entry.name})"
    if claim is not None and claim.commit:
        return WeightsState("Cached", f"{where} at commit {claim.commit}", claim.commit)
    if job is not None and job.failed:
        failed = next(
            (p.result for p in pods if p.result and p.result.get("event") == "failed"), None
        )
        said = str(failed.get("message")) if failed else "the fetch Job failed"
        return WeightsState("DownloadFailed", f"{where}: {said}")
    waiting = next((p.waiting for p in pods if p.waiting), "")
    if job is not None and waiting:
        return WeightsState("Pending", f"{where}: the fetch pod waits: {waiting}")
    attempt = f" (attempt {claim.failures + 1})" if claim is not None and claim.failures else ""
    if job is not None and job.active:
        done = str(progress.get("message", "")) if progress else "starting"
        return WeightsState("Downloading", f"{where}: {done}{attempt}")
    if claim is not None and claim.failures:
        error = claim.annotations.get(LAST_ERROR, "the fetch failed")
        retry = claim.annotations.get(RETRY_AT, "")
        return WeightsState("DownloadFailed", f"{where}: {error}; trying again at {retry}")
    return WeightsState("Pending", f"{where}: waiting for the fetch Job{attempt}")
