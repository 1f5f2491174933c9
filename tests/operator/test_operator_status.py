"""Status from children: summaries of real-shaped Pod/Deployment bodies, then conditions."""

from __future__ import annotations

from typing import Any

import pytest

from tti_operator.builders import Owner
from tti_operator.status import (
    DeploymentState,
    PodState,
    Problem,
    compute_status,
    deployment_state,
    pod_state,
)

OWNER = Owner(name="turbo", namespace="ml", uid="u1")
NOW = "2026-11-25T12:00:00Z"
LATER = "2026-11-25T12:05:00Z"
SCHEDULER_MESSAGE = (
    "0/2 nodes are available: 2 Insufficient nvidia.com/gpu. preemption: 0/2 nodes are "
    "available: 2 No preemption victims found for incoming pod."
)


def pod(name: str = "turbo-abc", **status: Any) -> dict[str, Any]:
    return {"metadata": {"name": name}, "status": status}


def deployment(generation: int = 1, **status: Any) -> dict[str, Any]:
    return {"metadata": {"generation": generation}, "status": status}


def conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def status_of(
    dep: DeploymentState | None,
    pods: list[PodState] = [],  # noqa: B006 - never mutated
    *,
    desired: int = 1,
    failure: Problem | None = None,
    previous: dict[str, Any] | None = None,
    now: str = NOW,
    autoscaling: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return compute_status(
        owner=OWNER,
        desired=desired,
        gpus=1,
        generation=4,
        deployment=dep,
        pods=pods,
        failure=failure,
        previous=previous or {},
        now=now,
        autoscaling=autoscaling,
    )


READY = deployment_state(
    deployment(generation=2, observedGeneration=2, replicas=1, readyReplicas=1, updatedReplicas=1)
)


def test_pod_state_reads_the_schedulers_message() -> None:
    state = pod_state(
        pod(
            phase="Pending",
            conditions=[
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": SCHEDULER_MESSAGE,
                }
            ],
        )
    )
    assert state.problem == Problem("Unschedulable", SCHEDULER_MESSAGE)
    assert not state.ready


def test_pod_state_reads_crash_loops_and_image_pulls() -> None:
    def waiting(reason: str) -> PodState:
        return pod_state(
            pod(
                containerStatuses=[
                    {"name": "server", "state": {"waiting": {"reason": reason, "message": "m"}}}
                ]
            )
        )

    assert waiting("CrashLoopBackOff").problem == Problem("CrashLoopBackOff", "container server: m")
    assert waiting("ErrImagePull").problem == Problem("ImagePullBackOff", "container server: m")
    assert waiting("ImagePullBackOff").problem == Problem("ImagePullBackOff", "container server: m")
    assert waiting("ContainerCreating").problem is None


#: Load errors the server ends with: weights of another family, and a GPU-only optimisation
#: on a pod that sees no CUDA device (a node whose driver is missing, say).
LOAD_ERRORS = [
    "tti-server: error: model: cannot load flux.1-dev from /weights: it is not FLUX",
    "tti-server: error: model: cannot load sdxl-turbo from /weights/hub/models--stabilityai"
    "--sdxl-turbo/snapshots/c0ffee: --optimisation compile-cudagraphs needs a CUDA device and"
    " this pod has none; use compile",
]


@pytest.mark.parametrize("said", LOAD_ERRORS)
def test_a_crash_loop_shows_the_last_line_the_server_said(said: str) -> None:
    """The server's one-line load error, kept by the kubelet as the termination message."""
    status = {
        "name": "server",
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
        "lastState": {"terminated": {"exitCode": 1, "message": f"loading\n{said}\n"}},
    }
    problem = pod_state(pod(containerStatuses=[status])).problem
    assert problem == Problem(
        "CrashLoopBackOff", f"container server: back-off 10s; it last said: {said}"
    )


def test_pod_state_reads_readiness_and_termination() -> None:
    state = pod_state(
        {
            "metadata": {"name": "p", "deletionTimestamp": NOW},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]},
        }
    )
    assert state.ready and state.terminating and state.problem is None


def test_deployment_state_reads_counts_and_deadline() -> None:
    state = deployment_state(
        deployment(
            generation=3,
            observedGeneration=2,
            replicas=2,
            readyReplicas=1,
            updatedReplicas=1,
            conditions=[
                {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}
            ],
        )
    )
    assert (state.generation, state.observed_generation, state.replicas) == (3, 2, 2)
    assert (state.ready_replicas, state.updated_replicas) == (1, 1)
    assert state.problem is not None and state.problem.reason == "ProgressDeadlineExceeded"


def test_ready_when_every_replica_of_the_current_template_is_ready() -> None:
    status = status_of(READY, [PodState("p", True, False, None)])
    c = conditions(status)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("True", "Available")
    assert c["Progressing"]["status"] == "False"
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("False", "AsExpected")
    assert status["phase"] == "Ready"
    assert status["ready"] == "1/1"
    assert status["observedGeneration"] == 4
    assert status["endpoint"] == "http://turbo.ml.svc:8080"
    assert status["gpus"] == 1
    assert status["selector"] == "app.kubernetes.io/name=tti-server,tti.dev/model=turbo"


def test_progressing_before_the_deployment_exists_and_during_a_rollout() -> None:
    creating = status_of(None)
    assert conditions(creating)["Ready"]["reason"] == "Creating"
    assert creating["phase"] == "Progressing"
    rolling = status_of(
        deployment_state(
            deployment(generation=3, observedGeneration=2, replicas=1, readyReplicas=1)
        )
    )
    c = conditions(rolling)
    assert (c["Ready"]["status"], c["Progressing"]["status"]) == ("False", "True")
    assert c["Progressing"]["reason"] == "RollingOut"
    assert rolling["ready"] == "1/1"


def test_unschedulable_gives_ready_false_with_the_schedulers_message() -> None:
    pending = PodState("turbo-x", False, False, Problem("Unschedulable", SCHEDULER_MESSAGE))
    status = status_of(
        deployment_state(deployment(observedGeneration=1, replicas=1, updatedReplicas=1)),
        [pending],
    )
    c = conditions(status)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "Unschedulable")
    assert SCHEDULER_MESSAGE in c["Ready"]["message"]
    assert (c["Degraded"]["status"], c["Degraded"]["reason"]) == ("True", "Unschedulable")
    assert status["phase"] == "Unschedulable"


def test_the_most_actionable_pod_problem_wins_and_terminating_pods_are_ignored() -> None:
    pods = [
        PodState("a", False, False, Problem("CrashLoopBackOff", "boom")),
        PodState("b", False, False, Problem("ImagePullBackOff", "no such image")),
        PodState("c", False, True, Problem("Unschedulable", "old pod going away")),
    ]
    c = conditions(status_of(None, pods))
    assert c["Degraded"]["reason"] == "ImagePullBackOff"
    assert c["Degraded"]["message"] == "no such image (pod b)"


def test_the_operators_own_failure_outranks_the_children() -> None:
    failure = Problem("ApplyFailed", "Deployment.apps is invalid")
    status = status_of(READY, failure=failure)
    c = conditions(status)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "ApplyFailed")
    assert status["phase"] == "Degraded"
    invalid = status_of(None, failure=Problem("InvalidSpec", "spec.model: bad"))
    assert invalid["phase"] == "Invalid"


def test_scaled_to_zero_is_not_ready_and_not_degraded() -> None:
    status = status_of(deployment_state(deployment(observedGeneration=1)), desired=0)
    c = conditions(status)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "ScaledDown")
    assert c["Degraded"]["status"] == "False"
    assert (status["phase"], status["ready"]) == ("ScaledDown", "0/0")


IDLE = {"desiredReplicas": 0, "load": 0.0, "reason": "idle for 300 s: scaled to zero"}


def test_scaled_to_zero_by_the_autoscaler_says_the_gateway_wakes_it() -> None:
    status = status_of(
        deployment_state(deployment(observedGeneration=1)), desired=0, autoscaling=IDLE
    )
    c = conditions(status)
    assert (c["Ready"]["status"], c["Ready"]["reason"]) == ("False", "ScaledToZero")
    assert c["Ready"]["message"] == (
        "scaled to zero by the autoscaler: the next request through the gateway wakes it"
    )
    assert c["Degraded"]["status"] == "False"  # by design, not broken
    assert (status["phase"], status["ready"]) == ("ScaledToZero", "0/0")
    assert status["autoscaling"] == IDLE


def test_autoscaling_removed_from_the_spec_is_removed_from_the_status() -> None:
    scaled = status_of(READY, autoscaling={**IDLE, "desiredReplicas": 1})
    assert status_of(READY, previous=scaled)["autoscaling"] is None  # merge patch: removes
    assert "autoscaling" not in status_of(READY)  # never there: nothing to remove


def test_transition_times_change_only_when_a_condition_flips() -> None:
    first = status_of(None)
    assert {c["lastTransitionTime"] for c in first["conditions"]} == {NOW}
    same = status_of(None, previous=first, now=LATER)
    assert same == first  # nothing changed: the operator skips the patch
    flipped = status_of(READY, previous=first, now=LATER)
    c = conditions(flipped)
    assert c["Ready"]["lastTransitionTime"] == LATER  # False -> True
    assert c["Degraded"]["lastTransitionTime"] == NOW  # still False
