"""The autoscaler's policy: what replicas a model's load asks for. Pure: one call per model
per interval, no I/O, no clock (the time is an argument).

desired = ceil(load / targetInFlight), bounded by minReplicas and maxReplicas. Scaling up
is immediate and may jump several replicas; scaling down goes only to the highest
recommendation of the last `scaleDownDelaySeconds` (the HPA's stabilisation window), so a
dip in the load never removes a replica and steady load never flaps. A replica count the
autoscaler did not set itself (the gateway waking a model at zero, `kubectl scale`, the
first look after a start) counts as a recommendation made now: it is kept for the delay.
A model at zero with a request waiting goes to at least one replica at once.

The loop that feeds it (scrapes, scale patches, Events) is `autoscale_loop.AutoscaleLoop`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from tti_operator.spec import Autoscaling


@dataclass(frozen=True)
class Load:
    """What the model's servers and the gateway report, for one interval."""

    #: Mean requests in flight or queued on the servers that answered.
    in_flight: float = 0.0
    #: Requests the gateway holds for a ready pod of the model.
    held: int = 0
    #: Every ready pod answered (missing data never scales down).
    complete: bool = True

    @property
    def total(self) -> float:
        return self.in_flight + self.held


@dataclass(frozen=True)
class History:
    """What the autoscaler remembers of one model between decisions."""

    #: (time, recommended replicas) of the last `scaleDownDelaySeconds`.
    recommendations: tuple[tuple[float, int], ...] = ()
    #: The replica count it last set or saw; None before its first decision.
    replicas: int | None = None
    #: When it last decided (monotonic seconds).
    decided_at: float = -math.inf


@dataclass(frozen=True)
class Decision:
    replicas: int
    reason: str
    history: History
    #: An Event reason when the count changes (ScaledUp, ScaledDown, ScaledToZero), else "".
    event: str = ""


def recommend(policy: Autoscaling, load: Load) -> int:
    """The replicas the load asks for, bounded; a held request asks for at least one."""
    wanted = math.ceil(load.total / policy.target_in_flight - 1e-9)
    if load.held:
        wanted = max(wanted, 1)
    return bound(policy, wanted)


def bound(policy: Autoscaling, replicas: int) -> int:
    return min(max(replicas, policy.min_replicas), policy.max_replicas)


def decide(
    policy: Autoscaling,
    replicas: int,
    load: Load,
    history: History,
    now: float,
    interval_s: float,
) -> Decision | None:
    """The replicas for the next interval, or None when it is too early to decide again.

    `replicas` is the model's `spec.replicas` now; a value other than the one remembered
    was set by someone else and is taken as a fresh scale-up.
    """
    if now - history.decided_at < interval_s:
        return None
    window = tuple(
        (t, r) for t, r in history.recommendations if t > now - policy.scale_down_delay_s
    )
    if history.replicas != replicas:
        window += ((now, bound(policy, replicas)),)
    wanted = recommend(policy, load)
    window += ((now, wanted),)
    ceiling = max(r for _, r in window)
    if wanted >= replicas:
        target = wanted
    elif not load.complete:
        target = bound(policy, replicas)  # some pod did not answer: never down on a guess
    else:
        target = bound(policy, min(replicas, ceiling))
    remembered = replace(history, recommendations=window, replicas=target, decided_at=now)
    reason = explain(policy, replicas, target, wanted, load)
    return Decision(target, reason, remembered, event(replicas, target))


def event(before: int, after: int) -> str:
    if after > before:
        return "ScaledUp"
    if after < before:
        return "ScaledToZero" if after == 0 else "ScaledDown"
    return ""


def explain(policy: Autoscaling, before: int, after: int, wanted: int, load: Load) -> str:
    """The decision in words, for the status and the Event."""
    target = f"target {policy.target_in_flight:g} per replica"
    seen = f"load {load.total:.3g} in flight over {_replicas(before)}, {target}"
    delay = policy.scale_down_delay_s
    if load.held and before == 0:
        return f"{load.held} requests waiting for a model at zero: woken to {after}"
    if after == 0 and before > 0:
        return f"idle for {delay} s: scaled to zero"
    if after == 0:
        return "scaled to zero: the next request through the gateway wakes it"
    if after < before:
        return f"{seen}, low for {delay} s: scaled down to {after}"
    if after > before:
        return f"{seen}: scaled up to {after}"
    if wanted < after and not load.complete:
        return f"{seen} (some pods did not answer: not scaling down)"
    if wanted < after:
        return f"{seen}: kept at {after} until the load has been low for {delay} s"
    return seen


def _replicas(count: int) -> str:
    return f"{count} replica" if count == 1 else f"{count} replicas"
