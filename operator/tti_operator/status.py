"""Status of a TextToImageModel, computed from its children: pure functions, no I/O.

The informer reduces each Deployment and Pod to a small frozen summary (kept in its
cache), and `compute_status` turns the summaries into the resource's status:
counts, a one-word phase for the printer column, and Ready / Progressing / Degraded
conditions whose reasons say what to do (Unschedulable carries the scheduler's message).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tti_operator.adapters import AdaptersState
from tti_operator.builders import Owner, endpoint, selector_string
from tti_operator.weights import Weights

#: Container waiting reasons that mean "this will not start by itself", mapped to the
#: reason the resource reports.
WAITING_PROBLEMS = {
    "ImagePullBackOff": "ImagePullBackOff",
    "ErrImagePull": "ImagePullBackOff",
    "InvalidImageName": "ImagePullBackOff",
    "ErrImageNeverPull": "ImagePullBackOff",
    "CrashLoopBackOff": "CrashLoopBackOff",
    "CreateContainerConfigError": "CreateContainerConfigError",
    "CreateContainerError": "CreateContainerError",
    "RunContainerError": "RunContainerError",
}
#: Which problem wins when several pods fail differently: the most actionable first.
PROBLEM_ORDER = (
    "Unschedulable",
    "ImagePullBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
    "CrashLoopBackOff",
)
#: Reasons shown as is in the one-word phase; any other problem shows as Degraded.
PHASE_REASONS = {"Unschedulable", "CrashLoopBackOff", "ImagePullBackOff", "DownloadFailed"}
#: The phase of a model whose weights are on their way to the cache, by the entry's reason.
WAITING_PHASES = {"Downloading": "Downloading", "Pending": "WaitingForWeights"}


@dataclass(frozen=True)
class Problem:
    reason: str
    message: str


@dataclass(frozen=True)
class PodState:
    name: str
    ready: bool
    terminating: bool
    problem: Problem | None
    #: `status.podIP`, where the autoscaler reads the server's load ("" before it has one).
    ip: str = ""


@dataclass(frozen=True)
class DeploymentState:
    generation: int
    observed_generation: int
    replicas: int
    ready_replicas: int
    updated_replicas: int
    problem: Problem | None


def _conditions(obj: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    items = obj.get("status", {}).get("conditions") or []
    return {c.get("type", ""): c for c in items}


def _waiting_problem(pod: Mapping[str, Any]) -> Problem | None:
    status = pod.get("status", {})
    for item in [*status.get("initContainerStatuses", []), *status.get("containerStatuses", [])]:
        waiting = (item.get("state") or {}).get("waiting") or {}
        reason = WAITING_PROBLEMS.get(waiting.get("reason", ""))
        if reason:
            detail = waiting.get("message") or waiting.get("reason")
            said = _last_words(item)
            detail = f"{detail}; it last said: {said}" if said else detail
            return Problem(reason, f"container {item.get('name')}: {detail}")
    return None


def _last_words(container_status: Mapping[str, Any]) -> str:
    """The last line of the container's previous run (its termination message: the server's
    one-line error when it could not load its model)."""
    terminated = (container_status.get("lastState") or {}).get("terminated") or {}
    lines = str(terminated.get("message") or "").strip().splitlines()
    return lines[-1] if lines else ""


def pod_state(pod: Mapping[str, Any]) -> PodState:
    """Reduce a Pod to what the status needs."""
    meta = pod.get("metadata", {})
    conditions = _conditions(pod)
    scheduled = conditions.get("PodScheduled", {})
    problem: Problem | None = None
    if scheduled.get("status") == "False" and scheduled.get("reason") == "Unschedulable":
        problem = Problem("Unschedulable", scheduled.get("message") or "no node fits the pod")
    else:
        problem = _waiting_problem(pod)
    return PodState(
        name=meta.get("name", ""),
        ready=conditions.get("Ready", {}).get("status") == "True",
        terminating=bool(meta.get("deletionTimestamp")),
        problem=problem,
        ip=str(pod.get("status", {}).get("podIP") or ""),
    )


def _deployment_problem(deployment: Mapping[str, Any]) -> Problem | None:
    conditions = _conditions(deployment)
    failure = conditions.get("ReplicaFailure", {})
    if failure.get("status") == "True":
        return Problem(failure.get("reason") or "ReplicaFailure", failure.get("message", ""))
    progressing = conditions.get("Progressing", {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return Problem("ProgressDeadlineExceeded", progressing.get("message", ""))
    return None


def deployment_state(deployment: Mapping[str, Any]) -> DeploymentState:
    """Reduce a Deployment to what the status needs."""
    status = deployment.get("status", {})
    return DeploymentState(
        generation=int(deployment.get("metadata", {}).get("generation", 0)),
        observed_generation=int(status.get("observedGeneration", 0)),
        replicas=int(status.get("replicas", 0)),
        ready_replicas=int(status.get("readyReplicas", 0)),
        updated_replicas=int(status.get("updatedReplicas", 0)),
        problem=_deployment_problem(deployment),
    )


def find_problem(deployment: DeploymentState | None, pods: Iterable[PodState]) -> Problem | None:
    """The most actionable reason the model is not serving, if any."""
    found = {p.problem.reason: p for p in pods if p.problem is not None and not p.terminating}
    for reason in PROBLEM_ORDER:
        if reason in found:
            pod = found[reason]
            assert pod.problem is not None
            return Problem(reason, f"{pod.problem.message} (pod {pod.name})")
    return deployment.problem if deployment is not None else None


def _rolled_out(deployment: DeploymentState, desired: int) -> bool:
    return (
        deployment.observed_generation >= deployment.generation
        and deployment.updated_replicas == desired
        and deployment.replicas == desired
    )


def _condition(kind: str, true: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if true else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


#: What a model scaled to zero by its autoscaler says: it is not broken, and how it comes back.
SCALED_TO_ZERO = "scaled to zero by the autoscaler: the next request through the gateway wakes it"


def conditions_for(
    desired: int,
    deployment: DeploymentState | None,
    problem: Problem | None,
    generation: int,
    autoscaled: bool = False,
    weights: Weights | None = None,
    adapters: AdaptersState | None = None,
) -> tuple[str, list[dict[str, Any]]]:
    """The phase and the Ready, Progressing and Degraded conditions (without times),
    WeightsReady for a model whose weights come from the model cache, and AdaptersReady for
    a model with adapters (it never holds Ready back: the base model serves meanwhile)."""
    ready = deployment.ready_replicas if deployment else 0
    counts = f"{ready}/{desired} replicas ready"
    available = deployment is not None and _rolled_out(deployment, desired) and ready >= desired
    if problem is not None:
        phase = problem.reason if problem.reason in PHASE_REASONS else "Degraded"
        phase = "Invalid" if problem.reason == "InvalidSpec" else phase
        ready_c = _condition("Ready", False, problem.reason, problem.message, generation)
        progressing = _condition("Progressing", False, problem.reason, problem.message, generation)
    elif weights is not None and not weights.state.ready:
        reason, message = weights.state.reason, weights.state.message
        phase = WAITING_PHASES.get(reason, reason)
        ready_c = _condition("Ready", False, reason, message, generation)
        progressing = _condition("Progressing", True, reason, message, generation)
    elif desired == 0 and autoscaled:
        phase = "ScaledToZero"
        ready_c = _condition("Ready", False, "ScaledToZero", SCALED_TO_ZERO, generation)
        progressing = _condition("Progressing", False, "ScaledToZero", "no pods wanted", generation)
    elif desired == 0:
        phase = "ScaledDown"
        ready_c = _condition("Ready", False, "ScaledDown", "spec.replicas is 0", generation)
        progressing = _condition("Progressing", False, "ScaledDown", "no pods wanted", generation)
    elif available:
        phase = "Ready"
        ready_c = _condition("Ready", True, "Available", counts, generation)
        progressing = _condition("Progressing", False, "Available", "rollout complete", generation)
    else:
        phase = "Progressing"
        reason = "Creating" if deployment is None else "RollingOut"
        if deployment is not None and _rolled_out(deployment, desired):
            reason = "PodsStarting"
        ready_c = _condition("Ready", False, reason, counts, generation)
        progressing = _condition("Progressing", True, reason, counts, generation)
    degraded = (
        _condition("Degraded", True, problem.reason, problem.message, generation)
        if problem is not None
        else _condition("Degraded", False, "AsExpected", "", generation)
    )
    conditions = [ready_c, progressing, degraded]
    if weights is not None:
        state = weights.state
        conditions.append(
            _condition("WeightsReady", state.ready, state.reason, state.message, generation)
        )
    if adapters is not None:
        conditions.append(
            _condition(
                "AdaptersReady", adapters.ready, adapters.reason, adapters.message, generation
            )
        )
    return phase, conditions


def with_transition_times(
    conditions: Sequence[dict[str, Any]],
    previous: Sequence[Mapping[str, Any]],
    now: str,
) -> list[dict[str, Any]]:
    """Keep a condition's lastTransitionTime while its status stays the same."""
    before = {c.get("type"): c for c in previous}
    timed = []
    for condition in conditions:
        old = before.get(condition["type"])
        same = old is not None and old.get("status") == condition["status"]
        stamp = old.get("lastTransitionTime") if same and old is not None else None
        timed.append({**condition, "lastTransitionTime": stamp or now})
    return timed


def compute_status(
    *,
    owner: Owner,
    desired: int,
    gpus: int,
    generation: int,
    deployment: DeploymentState | None,
    pods: Iterable[PodState],
    failure: Problem | None,
    previous: Mapping[str, Any],
    now: str,
    autoscaling: Mapping[str, Any] | None = None,
    weights: Weights | None = None,
    adapters: AdaptersState | None = None,
) -> dict[str, Any]:
    """The whole `status` of a TextToImageModel.

    `failure` is the operator's own problem with the resource (invalid spec, an apply the
    API server refused); it outranks what the children say. `previous` is the status
    now on the resource, so unchanged conditions keep their transition times.
    `autoscaling` is the autoscaler's last decision, for models it scales; `adapters`
    where the model's adapters stand, for models with adapters.
    """
    problem = failure or find_problem(deployment, pods)
    if problem is None and weights is not None and weights.state.reason == "DownloadFailed":
        problem = Problem("DownloadFailed", weights.state.message)
    autoscaled = autoscaling is not None
    phase, conditions = conditions_for(
        desired, deployment, problem, generation, autoscaled, weights, adapters
    )
    ready = deployment.ready_replicas if deployment else 0
    status = {
        "observedGeneration": generation,
        "replicas": deployment.replicas if deployment else 0,
        "readyReplicas": ready,
        "ready": f"{ready}/{desired}",
        "phase": phase,
        "gpus": gpus,
        "endpoint": endpoint(owner),
        "selector": selector_string(owner.name),
        "conditions": with_transition_times(conditions, previous.get("conditions") or [], now),
    }
    if weights is not None:
        entry = weights.entry
        status["weights"] = {
            "claim": entry.name,
            "repo": entry.repo,
            "revision": entry.revision,
            "commit": weights.state.commit,
        }
    elif "weights" in previous:
        status["weights"] = None
    if autoscaling is not None:
        status["autoscaling"] = dict(autoscaling)
    elif "autoscaling" in previous:
        status["autoscaling"] = None  # a merge patch removes a key only when told to
    return status
