"""Pure builders: the desired children (Deployment, Service, NetworkPolicy, the adapters'
ConfigMap, claim and fetch Jobs) of one TextToImageModel.

Each function maps (resource identity, parsed spec, operator settings) to a plain dict
that is server-side applied as is. No I/O here, so everything is unit-tested without a
cluster, and reapplying the same input is a no-op on the API server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tti_contracts.api import API_VERSION, KIND
from tti_contracts.catalogue import entry
from tti_operator import adapters
from tti_operator.adapters import Fetches
from tti_operator.ownership import MANAGED_BY, MANAGED_BY_LABEL
from tti_operator.podsecurity import container_security_context, pod_security_context
from tti_operator.settings import OperatorSettings
from tti_operator.spec import ModelSpec, Source
from tti_operator.weights import MOUNT_PATH, Weights, artefacts_path, fetch_job, snapshot_path

Obj = dict[str, Any]

PORT = 8080
#: caikit's gRPC API (ccv.ComputerVisionService, health, reflection), as the caikit runtime.
GRPC_PORT = 8085
CACHE_DIR = "/cache"
WEIGHTS_DIR = "/models"
HF_HOME = f"{CACHE_DIR}/huggingface"
#: `--compile-cache-dir` with the model cache: the commit's artefacts folder of the cache's
#: claim, mounted read-write, so the next pod of the same weights loads what this one
#: compiled.
SHARED_COMPILE_DIR = "/compile-cache"
#: `--compile-cache-dir` without it: the pod's own cache volume (each pod compiles anew).
OWN_COMPILE_DIR = f"{CACHE_DIR}/compile"
#: Room added to the pod's cache volume when it holds the compiled graphs: Inductor's and
#: Triton's caches of a denoiser at several batch sizes run to gigabytes, and a pod whose
#: emptyDir outgrows its sizeLimit is evicted.
OWN_COMPILE_ROOM_GI = 8
GPU_RESOURCE = "nvidia.com/gpu"
MODEL_LABEL = "tti.dev/model"
#: Set by the API server on every namespace (Kubernetes >= 1.21): a namespace by its name.
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"

#: How long a pod may take to load (and download) its model before liveness applies:
#: SDXL-Turbo's fp16 weights are ~7 GB, so allow 30 minutes on a slow link.
#: Probed every second until the server answers: a pod woken from zero is Ready (and the held
#: requests go to it) a second after its model is loaded, not up to a period later; still
#: 30 minutes in all for a model that downloads its weights first.
STARTUP_PERIOD_S = 1
STARTUP_FAILURES = 1800
#: Readiness every 2 s: a pod that finished its warm-up is sent requests within 2 s.
READY_PERIOD_S = 2


@dataclass(frozen=True)
class Owner:
    """What the builders need to know about the TextToImageModel itself."""

    name: str
    namespace: str
    uid: str


def selector_labels(name: str) -> dict[str, str]:
    """The labels that pick exactly this model's pods (immutable in the Deployment)."""
    return {"app.kubernetes.io/name": "tti-server", MODEL_LABEL: name}


def labels(name: str) -> dict[str, str]:
    return {
        **selector_labels(name),
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/component": "model-server",
        MANAGED_BY_LABEL: MANAGED_BY,
    }


def selector_string(name: str) -> str:
    """`status.selector` for the scale subresource (HorizontalPodAutoscaler reads it)."""
    return ",".join(f"{key}={value}" for key, value in sorted(selector_labels(name).items()))


def endpoint(owner: Owner) -> str:
    return f"http://{owner.name}.{owner.namespace}.svc:{PORT}"


def owner_reference(owner: Owner) -> Obj:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _metadata(owner: Owner, name: str | None = None) -> Obj:
    return {
        "name": name or owner.name,
        "namespace": owner.namespace,
        "labels": labels(owner.name),
        "ownerReferences": [owner_reference(owner)],
    }


def build_service(owner: Owner) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(owner.name),
            "ports": [
                {"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"},
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP"},
            ],
        },
    }


def default_resources(spec: ModelSpec) -> Obj:
    """Requests and limits per model, before the user's `spec.resources` are merged over."""
    defaults = entry(spec.model).resources(spec.gpus)
    return {"requests": dict(defaults.requests), "limits": dict(defaults.limits)}


def resources(spec: ModelSpec) -> Obj:
    defaults = default_resources(spec)
    requests = {**defaults["requests"], **spec.resources.requests}
    limits = {**defaults["limits"], **spec.resources.limits}
    # spec.gpus is the one source of truth for GPUs; a stray value in resources loses.
    requests.pop(GPU_RESOURCE, None)
    limits.pop(GPU_RESOURCE, None)
    if spec.gpus > 0:
        limits[GPU_RESOURCE] = spec.gpus
    return {"requests": requests, "limits": limits}


def model_path(source: Source | None) -> str | None:
    """What the server gets as --model-path: a repo id, or where the weights are mounted."""
    if source is None:
        return None
    if source.hugging_face is not None:
        return source.hugging_face.repo
    return WEIGHTS_DIR


def compiles_into_the_claim(spec: ModelSpec, weights: Weights | None) -> bool:
    """Whether the pod keeps its compiled graphs in the model cache's claim, beside the
    weights they were made for (rather than in its own cache volume)."""
    return spec.optimisation != "none" and weights is not None and weights.state.ready


def compile_cache_dir(spec: ModelSpec, weights: Weights | None) -> str:
    return SHARED_COMPILE_DIR if compiles_into_the_claim(spec, weights) else OWN_COMPILE_DIR


def server_args(owner: Owner, spec: ModelSpec, weights: Weights | None = None) -> list[str]:
    # Clients address the model by the resource's name (as KServe and vLLM do), not by
    # the backend: `model` / `model_id` in a request and `GET /v1/models` use it.
    args = ["--model", spec.model, "--model-id", owner.name, "--image-format", spec.image_format]
    path = model_path(spec.effective_source)
    if weights is not None and weights.state.ready:
        path = snapshot_path(weights.entry, weights.state.commit)
    if path is not None:
        args += ["--model-path", path]
    args += ["--host", "0.0.0.0", "--port", str(PORT), "--grpc-port", str(GRPC_PORT)]
    if spec.max_batch_size is not None:
        args += ["--max-batch-size", str(spec.max_batch_size)]
    if spec.batch_wait_ms is not None:
        args += ["--batch-wait-ms", str(spec.batch_wait_ms)]
    # Only when set: a model left at none keeps its pod template, so an upgrade rolls none out.
    if spec.optimisation != "none":
        args += ["--optimisation", spec.optimisation]
        args += ["--compile-cache-dir", compile_cache_dir(spec, weights)]
    # Always, also without adapters: adding one later changes the ConfigMap, not the pods.
    return [*args, "--adapters-file", adapters.MANIFEST_PATH]


def env(spec: ModelSpec, weights: Weights | None = None, *, playground: bool = True) -> list[Obj]:
    # The cache variables point every writer at the writable volume: the root fs is read-only.
    fixed: list[Obj] = [
        {"name": "HF_HOME", "value": HF_HOME},
        {"name": "XDG_CACHE_HOME", "value": CACHE_DIR},
        {"name": "HOME", "value": CACHE_DIR},
    ]
    if weights is not None:
        # The weights are in the cache: a pod never asks the hub for anything.
        fixed.append({"name": "HF_HUB_OFFLINE", "value": "1"})
    if not playground:
        # Set only to turn it off, so the default leaves every existing pod template as it was.
        fixed.append({"name": "TTI_PLAYGROUND", "value": "false"})
    user = [item.model_dump(by_alias=True, exclude_none=True) for item in spec.env]
    overridden = {item.name for item in spec.env}
    return [item for item in fixed if item["name"] not in overridden] + user


def volumes(
    owner: Owner, spec: ModelSpec, settings: OperatorSettings, weights: Weights | None = None
) -> tuple[list[Obj], list[Obj]]:
    """The pod's volumes and the container's mounts: caches always, weights when mounted,
    the adapters' manifest always and their files where mounted."""
    source = spec.effective_source
    # A pod's own Hugging Face download lands in its cache, so it needs room for the weights.
    own_download = weights is None and source is not None and source.hugging_face is not None
    cache_gi = 32 if own_download else 2
    if spec.optimisation != "none" and not compiles_into_the_claim(spec, weights):
        cache_gi += OWN_COMPILE_ROOM_GI
    vols: list[Obj] = [
        {"name": "cache", "emptyDir": {"sizeLimit": f"{cache_gi}Gi"}},
        {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
    ]
    mounts: list[Obj] = [
        {"name": "cache", "mountPath": CACHE_DIR},
        {"name": "tmp", "mountPath": "/tmp"},
    ]
    if weights is not None:
        # The weights' mount stays read-only; a read-only claim would make every mount so.
        shared_compile = compiles_into_the_claim(spec, weights)
        claim: Obj = {"claimName": weights.entry.name}
        if not shared_compile:
            claim["readOnly"] = True
        vols.append({"name": "weights", "persistentVolumeClaim": claim})
        mounts.append({"name": "weights", "mountPath": MOUNT_PATH, "readOnly": True})
        if shared_compile:
            # Only the commit's artefacts folder is writable. The fetch made it as the user
            # every model pod runs as (podsecurity), so the server may write into it.
            artefacts = artefacts_path(weights.entry, weights.state.commit)
            mounts.append(
                {"name": "weights", "mountPath": SHARED_COMPILE_DIR, "subPath": artefacts}
            )
    elif source is not None and source.pvc is not None:
        vols.append(
            {
                "name": "weights",
                "persistentVolumeClaim": {"claimName": source.pvc.claim_name, "readOnly": True},
            }
        )
        mount: Obj = {"name": "weights", "mountPath": WEIGHTS_DIR, "readOnly": True}
        if source.pvc.sub_path:
            mount["subPath"] = source.pvc.sub_path
        mounts.append(mount)
    elif source is not None and source.host_path is not None:
        vols.append(
            {"name": "weights", "hostPath": {"path": source.host_path.path, "type": "Directory"}}
        )
        mounts.append({"name": "weights", "mountPath": WEIGHTS_DIR, "readOnly": True})
    adapter_vols, adapter_mounts = adapters.volumes(owner.name, spec, settings)
    return vols + adapter_vols, mounts + adapter_mounts


def probes() -> Obj:
    def get(path: str, period: int, failures: int) -> Obj:
        return {
            "httpGet": {"path": path, "port": "http"},
            "periodSeconds": period,
            "timeoutSeconds": 5,
            "failureThreshold": failures,
        }

    return {
        # /healthz only answers once the server is up; until then the startup probe
        # holds liveness off for the whole model load (download included).
        "startupProbe": get("/healthz", STARTUP_PERIOD_S, STARTUP_FAILURES),
        "livenessProbe": get("/healthz", 10, 3),
        "readinessProbe": get("/readyz", READY_PERIOD_S, 3),
    }


def tolerations(spec: ModelSpec) -> list[Obj]:
    gpu: list[Obj] = (
        [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}]
        if spec.gpus > 0
        else []
    )
    return gpu + [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]


def rollout_strategy(spec: ModelSpec) -> Obj:
    # A GPU rollout replaces pods one by one instead of surging: a surge pod would need a
    # spare GPU and could wait forever in a full pool. CPU models surge for zero downtime.
    if spec.gpus > 0:
        return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}
    return {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}


def pod_template(
    owner: Owner, spec: ModelSpec, settings: OperatorSettings, weights: Weights | None = None
) -> Obj:
    vols, mounts = volumes(owner, spec, settings, weights)
    container: Obj = {
        "name": "server",
        "image": spec.image or settings.server_image,
        "imagePullPolicy": "IfNotPresent",
        "args": server_args(owner, spec, weights),
        "env": env(spec, weights, playground=settings.playground),
        "ports": [
            {"name": "http", "containerPort": PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
        ],
        "resources": resources(spec),
        "securityContext": container_security_context(),
        "volumeMounts": mounts,
        # A server that cannot load its model ends with one line saying why (the wrong
        # family, missing weights); the kubelet keeps it and the status shows it.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        **probes(),
    }
    pod_spec: Obj = {
        "containers": [container],
        "volumes": vols,
        "securityContext": pod_security_context(
            # A writable claim would otherwise have the kubelet change the group of every
            # file of the weights at each pod start (the fetch made them with that group).
            keep_owned_volumes=compiles_into_the_claim(spec, weights)
        ),
        # The server never calls the API, and a namespace with many models would
        # otherwise inject every Service's variables into every pod.
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
    }
    if spec.node_selector:
        pod_spec["nodeSelector"] = dict(spec.node_selector)
    if tols := tolerations(spec):
        pod_spec["tolerations"] = tols
    return {
        "metadata": {
            "labels": labels(owner.name),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod_spec,
    }


def build_deployment(
    owner: Owner, spec: ModelSpec, settings: OperatorSettings, weights: Weights | None = None
) -> Obj:
    # No pod holds a GPU while its weights are still on their way to the cache.
    waiting = weights is not None and not weights.state.ready
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner),
        "spec": {
            "replicas": 0 if waiting else spec.replicas,
            "selector": {"matchLabels": selector_labels(owner.name)},
            "strategy": rollout_strategy(spec),
            # Beyond the startup probe's budget, so a slow download is not called stuck.
            "progressDeadlineSeconds": STARTUP_PERIOD_S * STARTUP_FAILURES + 600,
            "revisionHistoryLimit": 3,
            "template": pod_template(owner, spec, settings, weights),
        },
    }


def pods_of(namespace: str, pod_labels: Mapping[str, str]) -> Obj:
    """A NetworkPolicy peer: the pods with these labels in that one namespace."""
    return {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}},
        "podSelector": {"matchLabels": dict(pod_labels)},
    }


def tcp(*ports: int) -> list[Obj]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def build_network_policy(owner: Owner, spec: ModelSpec, settings: OperatorSettings) -> Obj:
    """Who may open a connection to the model's pods; everyone else is refused.

    The gateway (it forwards HTTP), the operator (its autoscaler reads each pod's /metrics)
    and the configured metrics scrapers reach the HTTP port; the callers `spec.access`
    allows (by default the model's own namespace) reach both APIs, HTTP and gRPC. The node
    itself (the kubelet's probes) is let in by the common engines (kube-router, Calico,
    Cilium). Ingress only: a model still downloads its weights.
    """
    platform = [
        pods_of(settings.gateway_namespace_or_own, settings.gateway_pod_labels),
        pods_of(settings.own_namespace, settings.own_pod_labels),
        *(peer.as_peer() for peer in settings.metrics_scrapers),
    ]
    rules: list[Obj] = [{"from": platform, "ports": tcp(PORT)}]
    # A rule without `from` would let everyone in: no callers, no rule.
    if callers := [peer.as_peer() for peer in spec.callers]:
        rules.append({"from": callers, "ports": tcp(PORT, GRPC_PORT)})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(owner),
        "spec": {
            "podSelector": {"matchLabels": selector_labels(owner.name)},
            "policyTypes": ["Ingress"],
            "ingress": rules,
        },
    }


def build_adapters_config_map(
    owner: Owner, spec: ModelSpec, settings: OperatorSettings, fetches: Fetches
) -> Obj:
    """`<model>-adapters`: the manifest of the adapters whose file is there."""
    text = adapters.manifest_json(owner.name, spec, settings, fetches)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(owner, adapters.resource_name(owner.name)),
        "data": {adapters.MANIFEST_KEY: text},
    }


def build_adapter_claim(owner: Owner, spec: ModelSpec, settings: OperatorSettings) -> Obj | None:
    """`<model>-adapters`, the claim the hub adapters are fetched into (owned by the model:
    the files go with it); None when there is nothing to fetch."""
    storage = adapters.cache_of(spec, settings)
    if storage is None:
        return None
    claim_spec: Obj = {
        "accessModes": [storage.access_mode],
        "resources": {"requests": {"storage": storage.size}},
    }
    if storage.storage_class_name:
        claim_spec["storageClassName"] = storage.storage_class_name
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": _metadata(owner, adapters.resource_name(owner.name)),
        "spec": claim_spec,
    }


def build_adapter_jobs(owner: Owner, spec: ModelSpec, settings: OperatorSettings) -> list[Obj]:
    """One fetch Job per hub adapter file, into the model's adapter claim."""
    storage = adapters.cache_of(spec, settings)
    if storage is None:
        return []
    jobs: dict[str, Obj] = {}
    for adapter in spec.adapters:
        hub = adapter.source.hugging_face
        if hub is None:
            continue
        name = adapters.job_name(owner.name, hub)
        fetch = adapters.adapter_fetch(owner.name, hub, storage, settings)
        jobs[name] = fetch_job(_metadata(owner, name), fetch, settings)
    return [jobs[name] for name in sorted(jobs)]  # two adapters may share a file


def desired_children(
    owner: Owner,
    spec: ModelSpec,
    settings: OperatorSettings,
    weights: Weights | None = None,
    fetches: Fetches | None = None,
) -> list[Obj]:
    """Every child the model should have now, in the order they are applied: the
    NetworkPolicy first, so that no pod of the model ever runs unguarded, then what the
    pods mount (the adapters' manifest and claim), the Deployment, which the rollout waits
    on, the Service and the adapters' fetch Jobs; `weights` is its cache entry, if any,
    `fetches` its adapters' fetch Jobs as last seen. An owned child missing here is deleted
    where its kind allows (see `kinds`)."""
    guard = [build_network_policy(owner, spec, settings)] if settings.network_policies else []
    manifest = build_adapters_config_map(owner, spec, settings, fetches or {})
    claim = build_adapter_claim(owner, spec, settings)
    mounted = [manifest] if claim is None else [manifest, claim]
    deployment = build_deployment(owner, spec, settings, weights)
    jobs = build_adapter_jobs(owner, spec, settings)
    return [*guard, *mounted, deployment, build_service(owner), *jobs]


def build_event(
    resource: Mapping[str, Any], type: str, reason: str, message: str, component: str, now: str
) -> dict[str, Any]:
    """A core/v1 Event about `resource`, as `kubectl describe` and `kubectl events` show it."""
    meta = resource["metadata"]
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": resource["apiVersion"],
            "kind": resource["kind"],
            "name": meta["name"],
            "namespace": meta["namespace"],
            "uid": meta["uid"],
        },
        "type": type,
        "reason": reason,
        "message": message[:1024],  # the API server refuses longer ones
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": component,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
