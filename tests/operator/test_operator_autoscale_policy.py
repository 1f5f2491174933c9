"""The autoscaler's decision, as tables: load and time in, replicas and reason out."""

from __future__ import annotations

import pytest

from tti_operator.autoscale_policy import Decision, History, Load, decide, recommend
from tti_operator.spec import Autoscaling

INTERVAL = 2.0


def policy(min: int = 1, max: int = 10, target: float = 2, delay: int = 60) -> Autoscaling:
    return Autoscaling.model_validate(
        {
            "minReplicas": min,
            "maxReplicas": max,
            "targetInFlight": target,
            "scaleDownDelaySeconds": delay,
        }
    )


def run(p: Autoscaling, replicas: int, loads: list[float], start: float = 0.0) -> list[Decision]:
    """One decision per interval over `loads`, each applied before the next, from the
    autoscaler's first look at a model with `replicas`."""
    history, decisions = History(), []
    for step, load in enumerate(loads):
        decision = decide(p, replicas, Load(load), history, start + step * INTERVAL, INTERVAL)
        assert decision is not None
        decisions.append(decision)
        history, replicas = decision.history, decision.replicas
    return decisions


@pytest.mark.parametrize(
    ("load", "held", "bounds", "expected"),
    [
        (0.0, 0, (1, 10), 1),  # the floor
        (0.0, 0, (0, 10), 0),  # scale to zero allowed
        (0.0, 1, (0, 10), 1),  # a held request wakes the model
        (4.0, 0, (1, 10), 2),  # exactly on target
        (4.1, 0, (1, 10), 3),  # a little over: one more
        (7.5, 0, (1, 10), 4),
        (100.0, 0, (1, 10), 10),  # the ceiling
        (3.0, 2, (0, 10), 3),  # held requests count as load
    ],
)
def test_recommendation_follows_load_within_bounds(
    load: float, held: int, bounds: tuple[int, int], expected: int
) -> None:
    assert recommend(policy(*bounds), Load(load, held)) == expected


def test_scale_up_is_immediate_and_jumps() -> None:
    [decision] = run(policy(), 1, [15.0])
    assert (decision.replicas, decision.event) == (8, "ScaledUp")
    assert (
        decision.reason == "load 15 in flight over 1 replica, target 2 per replica: scaled up to 8"
    )


def test_scale_down_waits_for_the_delay_then_goes_to_the_highest_recent_recommendation() -> None:
    p = policy(delay=10)
    # Busy (4 replicas), then the load falls to 2 replicas' worth, then to one's.
    decisions = run(p, 4, [8.0, 4.0, 4.0, 4.0, 4.0, 4.0, 2.0, 2.0, 2.0, 2.0, 2.0, 2.0])
    replicas = [d.replicas for d in decisions]
    # t=0 busy; at t=2..8 the 10 s window still holds t=0's 4, at t=10 it no longer does;
    # the 2s recommended until t=10 hold until t=20.
    assert replicas == [4, 4, 4, 4, 4, 2, 2, 2, 2, 2, 1, 1]
    assert decisions[5].event == "ScaledDown"
    assert "low for 10 s: scaled down to 2" in decisions[5].reason


def test_no_flapping_under_steady_but_noisy_load() -> None:
    noisy = [6.0, 3.5, 5.9, 2.1, 6.0, 4.4, 5.5, 3.0] * 5  # wanted swings between 2 and 3
    decisions = run(policy(delay=30), 3, noisy)
    assert {d.replicas for d in decisions} == {3}
    assert all(d.event == "" for d in decisions)


def test_idle_model_with_min_zero_is_scaled_to_zero_after_the_delay() -> None:
    decisions = run(policy(min=0, delay=6), 1, [0.0] * 5)
    assert [d.replicas for d in decisions] == [1, 1, 1, 0, 0]
    assert decisions[3].event == "ScaledToZero"
    assert decisions[3].reason == "idle for 6 s: scaled to zero"
    assert decisions[4].reason == "scaled to zero: the next request through the gateway wakes it"


def test_a_request_held_at_zero_wakes_the_model_at_once() -> None:
    p = policy(min=0, delay=300)
    decision = decide(p, 0, Load(0.0, held=3), History(replicas=0), 0.0, INTERVAL)
    assert decision is not None
    assert (decision.replicas, decision.event) == (2, "ScaledUp")
    assert decision.reason == "3 requests waiting for a model at zero: woken to 2"


def test_a_replica_count_set_from_outside_counts_as_a_fresh_scale_up() -> None:
    """The gateway woke the model (0 -> 1) before any load reached a server: the idle
    autoscaler must keep that replica for the whole delay, not undo it at once."""
    p = policy(min=0, delay=6)
    history = History(replicas=0)
    replicas, seen = 1, []  # scaled to 1 by someone else
    for step in range(6):
        decision = decide(p, replicas, Load(0.0), history, step * INTERVAL, INTERVAL)
        assert decision is not None
        history, replicas = decision.history, decision.replicas
        seen.append(replicas)
    assert seen == [1, 1, 1, 0, 0, 0]


def test_a_replica_kept_by_the_window_says_until_when() -> None:
    p = policy(min=0, delay=300)
    decision = decide(p, 1, Load(0.0), History(replicas=0), 0.0, INTERVAL)
    assert decision is not None and decision.replicas == 1
    assert decision.reason == (
        "load 0 in flight over 1 replica, target 2 per replica: "
        "kept at 1 until the load has been low for 300 s"
    )


def test_the_first_look_after_a_start_keeps_the_replicas_for_the_delay() -> None:
    p = policy(delay=4)
    first = decide(p, 5, Load(0.0), History(), 0.0, INTERVAL)
    assert first is not None and first.replicas == 5


def test_missing_data_never_scales_down() -> None:
    p = policy(delay=0)
    decision = decide(p, 4, Load(1.0, complete=False), History(replicas=4), 0.0, INTERVAL)
    assert decision is not None and decision.replicas == 4
    assert "some pods did not answer" in decision.reason
    up = decide(p, 4, Load(20.0, complete=False), History(replicas=4), 0.0, INTERVAL)
    assert up is not None and up.replicas == 10  # what did answer may still scale up


def test_at_most_one_decision_per_interval() -> None:
    p = policy()
    first = decide(p, 1, Load(20.0), History(replicas=1), 10.0, INTERVAL)
    assert first is not None
    assert decide(p, first.replicas, Load(0.0), first.history, 11.0, INTERVAL) is None
    assert decide(p, first.replicas, Load(0.0), first.history, 12.0, INTERVAL) is not None


def test_bounds_changed_in_the_spec_apply_at_once() -> None:
    lowered = decide(policy(max=3), 8, Load(20.0), History(replicas=8), 0.0, INTERVAL)
    raised = decide(policy(min=4), 1, Load(0.0), History(replicas=1), 0.0, INTERVAL)
    assert lowered is not None and (lowered.replicas, lowered.event) == (3, "ScaledDown")
    assert raised is not None and (raised.replicas, raised.event) == (4, "ScaledUp")
