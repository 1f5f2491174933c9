"""The kinds the operator watches and writes, as data: one row per kind, read by everything else.

The client takes its API paths from a row, the informer what to watch and what to keep of
each object, the reconciler how to tell a hand edit from its own write and whether it may
delete a child it no longer wants, the status which summaries to read; a test checks the
chart's RBAC grants each row exactly the verbs it implies. A model's own children are
`CHILD_KINDS` (adding one is a row here plus its builder in `builders.desired_children`);
the model cache's objects, shared by the models that name an entry and owned by none of
them, are `CACHE_KINDS` (see `weights`).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tti_operator.adapters import fetch_job_state
from tti_operator.status import deployment_state, pod_state
from tti_operator.weights import claim_state, fetch_pod_state, job_state


class Drift(enum.Enum):
    """What in a child's metadata shows it was changed by someone else since it was applied."""

    #: Observed only: the operator never writes it, so nothing to restore.
    NONE = "none"
    #: `metadata.generation` past the one applied: a spec edit (status writes do not count).
    GENERATION = "generation"
    #: `metadata.resourceVersion` other than the one applied: any write at all.
    VERSION = "version"


@dataclass(frozen=True)
class ChildKind:
    kind: str
    api_version: str  # "v1", "apps/v1"
    plural: str
    #: What the informer keeps of each object besides its identity (None: nothing).
    summarise: Callable[[Mapping[str, Any]], object] | None
    drift: Drift
    #: Deleted by the operator (a model's NetworkPolicy no longer wanted, the model cache's
    #: fetch Jobs once read, its expired claims).
    deleted: bool = False
    #: Its spec cannot change once created (a Job's template, a claim's class): applied
    #: only while missing, never again over the live one.
    create_only: bool = False

    @property
    def applied(self) -> bool:
        """Written by the operator (server-side apply), hence watched for hand edits."""
        return self.drift is not Drift.NONE

    @property
    def group(self) -> str:
        return self.api_version.rpartition("/")[0]

    def collection_path(self, namespace: str | None) -> str:
        prefix = f"/apis/{self.api_version}" if self.group else f"/api/{self.api_version}"
        where = f"/namespaces/{namespace}" if namespace else ""
        return f"{prefix}{where}/{self.plural}"

    def object_path(self, namespace: str, name: str) -> str:
        return f"{self.collection_path(namespace)}/{name}"

    @property
    def verbs(self) -> frozenset[str]:
        """What the operator's RBAC must grant on this kind: watched always (list, watch),
        server-side applied (`patch`, and `create` for an apply that creates), deleted."""
        verbs = {"list", "watch"}
        if self.applied:
            verbs |= {"create", "patch"}
        if self.deleted:
            verbs.add("delete")
        return frozenset(verbs)


# The Deployment and the Service are desired for as long as their model exists: they go with
# it by owner-reference garbage collection, and the operator never deletes one.
DEPLOYMENT = ChildKind("Deployment", "apps/v1", "deployments", deployment_state, Drift.GENERATION)
SERVICE = ChildKind("Service", "v1", "services", None, Drift.VERSION)
#: The pods are the Deployment's: watched for the status (scheduling, crash loops, pulls).
POD = ChildKind("Pod", "v1", "pods", pod_state, Drift.NONE)
#: Desired while the operator's `network_policies` setting is on (the chart's
#: networkPolicies.enabled); turned off, the reconcile deletes (prunes) the ones it made.
NETWORK_POLICY = ChildKind(
    "NetworkPolicy",
    "networking.k8s.io/v1",
    "networkpolicies",
    None,
    Drift.GENERATION,
    deleted=True,
)

#: `<model>-adapters`, the adapters manifest every model pod reads (see `adapters`).
CONFIG_MAP = ChildKind("ConfigMap", "v1", "configmaps", None, Drift.VERSION)
#: `<model>-adapters`, the claim the fetched hub adapters are kept in, and their fetch
#: Jobs (one per file, kept while the adapter is: the commit it found is written on it);
#: deleted once no adapter wants them.
ADAPTER_CLAIM = ChildKind(
    "PersistentVolumeClaim",
    "v1",
    "persistentvolumeclaims",
    None,
    Drift.GENERATION,
    deleted=True,
    create_only=True,
)
ADAPTER_JOB = ChildKind(
    "Job",
    "batch/v1",
    "jobs",
    fetch_job_state,
    Drift.GENERATION,
    deleted=True,
    create_only=True,
)

CHILD_KINDS: tuple[ChildKind, ...] = (
    DEPLOYMENT,
    SERVICE,
    POD,
    NETWORK_POLICY,
    CONFIG_MAP,
    ADAPTER_CLAIM,
    ADAPTER_JOB,
)

#: A cache entry's claim (annotated with what its fetch found, deleted once unused for the
#: retention), its fetch Job (deleted once its result is on the claim) and the Job's pods.
CLAIM = ChildKind(
    "PersistentVolumeClaim",
    "v1",
    "persistentvolumeclaims",
    claim_state,
    Drift.VERSION,
    deleted=True,
)
FETCH_JOB = ChildKind("Job", "batch/v1", "jobs", job_state, Drift.GENERATION, deleted=True)
FETCH_POD = ChildKind("Pod", "v1", "pods", fetch_pod_state, Drift.NONE)
CACHE_KINDS: tuple[ChildKind, ...] = (CLAIM, FETCH_JOB, FETCH_POD)


def kind_of(obj: Mapping[str, Any], kinds: tuple[ChildKind, ...] = CHILD_KINDS) -> ChildKind:
    """The row of a built object (by apiVersion and kind)."""
    for row in kinds:
        if (row.api_version, row.kind) == (obj["apiVersion"], obj["kind"]):
            return row
    raise KeyError(f"{obj['apiVersion']} {obj['kind']} is not a child kind")
