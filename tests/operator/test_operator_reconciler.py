"""The reconcile loop's decisions, with an in-memory API in place of the cluster.

What is checked here is the operator's own logic (when to reapply, when to patch the
status, which Events to post, how failures surface, what the work queue promises); the
real API server, apply semantics and garbage collection are exercised in
test_operator_cluster.py.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
from aiohttp import web
from memory_cluster import Harness, MemoryApi, body, owned_by, pod, refuse_name

from tti_kube.client import ApiError, KubeClient
from tti_operator.builders import labels
from tti_operator.kinds import CONFIG_MAP, DEPLOYMENT, NETWORK_POLICY, POD, SERVICE

Obj = dict[str, Any]
#: What a model gets, in the order it is applied.
CHILDREN = [
    ("NetworkPolicy", "m"),
    ("ConfigMap", "m-adapters"),
    ("Deployment", "m"),
    ("Service", "m"),
]


@pytest.fixture
def h() -> Iterator[Harness]:
    harness = Harness()
    yield harness
    harness.close()


def condition(status: Obj, kind: str) -> Obj:
    return next(c for c in status["conditions"] if c["type"] == kind)


def test_create_applies_every_child_posts_created_and_a_status(h: Harness) -> None:
    h.model(body())
    # The NetworkPolicy first: no pod of the model runs before its policy exists.
    assert h.api.applies == CHILDREN
    assert h.events == [("Normal", "Created")]
    assert len(h.api.statuses) == 1
    assert h.api.statuses[0]["phase"] == "Progressing"
    assert h.api.statuses[0]["observedGeneration"] == 1


def test_every_event_posted_is_logged_too(h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tti_operator.reconciler"):
        h.model(body())
        h.model(body({"model": "dalle"}, generation=2), "MODIFIED")
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    created = "ns/m: Created: created NetworkPolicy, ConfigMap, Deployment and Service m"
    assert ("INFO", created) in logged
    assert any(level == "WARNING" and "ns/m: Failed: InvalidSpec" in m for level, m in logged)


def test_reconciling_an_unchanged_resource_writes_no_status_and_posts_nothing(
    h: Harness,
) -> None:
    h.model(body())
    h.events.clear()
    h.enqueue()
    assert len(h.api.statuses) == 1
    assert len(h.api.applies) == len(CHILDREN)
    assert h.events == []


def test_a_spec_change_updates_the_deployment_and_posts_updated(h: Harness) -> None:
    h.model(body())
    h.model(body({"model": "stub", "imageFormat": "webp"}, generation=2), "MODIFIED")
    assert h.stored("Deployment")["metadata"]["generation"] == 2
    assert ("Normal", "Updated") in h.events
    assert h.api.statuses[-1]["observedGeneration"] == 2


def test_the_operators_own_writes_are_not_drift(h: Harness) -> None:
    h.model(body())  # the watches report both writes as they happen
    applies = len(h.api.applies)
    h.api.edit(DEPLOYMENT, "m", lambda d: d.update(status={"replicas": 1}), spec=False)
    h.settle()
    assert len(h.api.applies) == applies


def test_a_hand_edited_or_deleted_child_is_reapplied(h: Harness) -> None:
    h.model(body())
    applies = len(h.api.applies)

    def image(d: Obj) -> None:
        d["spec"]["template"]["spec"]["containers"][0]["image"] = "someone-elses:1"

    h.api.edit(DEPLOYMENT, "m", image, spec=True)
    h.settle()
    assert h.api.applies[applies:] == [("Deployment", "m")]
    h.api.remove(SERVICE, "m")
    h.settle()
    assert h.api.applies[applies + 1 :] == [("Service", "m")]
    h.api.edit(SERVICE, "m", lambda s: s["metadata"].update(labels={}), spec=False)
    h.settle()
    assert h.api.applies[applies + 2 :] == [("Service", "m")]
    h.api.edit(DEPLOYMENT, "m", lambda d: d["metadata"].update(ownerReferences=[]), spec=False)
    h.settle()
    assert h.api.applies[applies + 3 :] == [("Deployment", "m")]
    assert h.stored("Service")["metadata"]["labels"] == labels("m")


def test_a_child_edited_while_its_watch_was_down_is_reapplied_when_relisted(h: Harness) -> None:
    """A relist reports what changed meanwhile with no event type, like the first listing."""
    h.model(body())
    applies = len(h.api.applies)
    h.observe(DEPLOYMENT, None, h.stored("Deployment"))  # relisted unchanged
    h.settle()
    assert len(h.api.applies) == applies
    h.api.lagging = True  # the watch is down
    h.api.edit(DEPLOYMENT, "m", lambda d: d["spec"].update(replicas=5), spec=True)
    h.settle()
    assert len(h.api.applies) == applies
    h.observe(DEPLOYMENT, None, h.stored("Deployment"))  # the relist
    h.settle()
    assert h.api.applies[applies:] == [("Deployment", "m")]
    assert h.stored("Deployment")["spec"]["replicas"] == 1


def test_pod_events_only_refresh_the_status(h: Harness) -> None:
    h.model(body())
    applies = len(h.api.applies)
    h.pods(pod("m", "m-1", "Unschedulable", "0/2 nodes are available"))
    assert len(h.api.applies) == applies
    assert h.api.statuses[-1]["phase"] == "Unschedulable"
    assert ("Warning", "Unschedulable") in h.events


def test_a_burst_of_child_events_gives_one_status_patch() -> None:
    h = Harness(status_delay_s=0.05)
    try:
        h.model(body())
        patches, reconciles = len(h.api.statuses), len(h.reconciles)
        for n in range(10):
            h.api.put(POD, pod("m", "m-1", "CrashLoopBackOff", f"exit {n}"))
        h.settle()
        assert len(h.api.statuses) == patches + 1
        assert len(h.reconciles) == reconciles + 1
    finally:
        h.close()


def test_a_burst_of_events_for_one_model_is_one_reconcile(h: Harness) -> None:
    """Model events, child events and requeues that arrive before a worker takes the model
    are one reconcile, which reads the latest of everything."""
    h.model(body())
    before = len(h.reconciles)
    h.model(body(), "MODIFIED", settle=False)  # echoes of its status patch
    for n in range(5):
        h.api.put(POD, pod("m", f"m-{n}"))
    for _ in range(3):
        h.enqueue(settle=False)
    h.settle()
    assert len(h.reconciles) == before + 1


def test_spec_changes_in_a_burst_apply_only_the_latest(h: Harness) -> None:
    h.model(body())
    applies = len(h.api.applies)
    for replicas in (2, 3, 4):
        spec = {"model": "stub", "replicas": replicas}
        h.model(body(spec, generation=replicas), "MODIFIED", settle=False)
    h.settle()
    assert h.api.applies[applies:] == CHILDREN
    assert h.stored("Deployment")["spec"]["replicas"] == 4
    assert h.api.statuses[-1]["observedGeneration"] == 4


def test_an_invalid_spec_is_a_permanent_failure_on_the_status(h: Harness) -> None:
    h.model(body({"model": "dalle"}))
    assert h.api.applies == []
    status = h.api.statuses[-1]
    assert status["phase"] == "Invalid"
    degraded = condition(status, "Degraded")
    assert degraded["reason"] == "InvalidSpec" and "spec.model" in degraded["message"]
    assert ("Warning", "Failed") in h.events
    assert h.controller.queue.failures(("ns", "m")) == 0  # nothing to retry until it changes
    h.enqueue()
    assert h.events.count(("Warning", "Failed")) == 1


def test_a_refused_apply_is_permanent_and_an_unreachable_api_is_retried(h: Harness) -> None:
    h.api.refuse = ApiError(422, 'Deployment.apps "m" is invalid')
    h.model(body())
    assert h.api.statuses[-1]["phase"] == "Degraded"
    assert h.controller.queue.failures(("ns", "m")) == 0
    h.enqueue()  # a child event, say: the refused spec is not tried again
    assert h.api.applies == []
    h.api.refuse = ApiError(503, "API server unreachable")
    h.model(body({"model": "stub", "replicas": 2}, generation=2), "MODIFIED", settle=False)
    h.run(h.until(lambda: h.controller.queue.failures(("ns", "m")) >= 2, "two failed tries"))
    h.api.refuse = None
    h.settle()
    assert h.api.applies == CHILDREN  # by the retry
    assert condition(h.api.statuses[-1], "Degraded")["status"] == "False"
    assert h.controller.queue.failures(("ns", "m")) == 0


def test_an_unexpected_error_is_retried_not_left_until_the_next_spec_change(h: Harness) -> None:
    h.api.refuse = RuntimeError("a bug, or a library's surprise")
    h.model(body(), settle=False)
    h.run(h.until(lambda: h.controller.queue.failures(("ns", "m")) >= 1, "a failed try"))
    h.api.refuse = None
    h.settle()
    assert h.api.applies == CHILDREN
    assert h.api.statuses[-1]["observedGeneration"] == 1


def test_a_status_refresh_that_fails_is_retried(h: Harness) -> None:
    """Else a model whose pods just became ready could show Progressing for good."""
    h.model(body())
    h.api.refuse_status = ApiError(503, "API server unreachable")
    h.api.put(POD, pod("m", "m-1", "Unschedulable", "0/2 nodes are available"))
    h.run(h.until(lambda: h.controller.queue.failures(("ns", "m")) >= 1, "a failed refresh"))
    h.api.refuse_status = None
    h.settle()
    assert h.api.statuses[-1]["phase"] == "Unschedulable"


def test_a_failing_model_backs_off_and_recovers_without_holding_up_the_others(
    h: Harness,
) -> None:
    h.api.refuse = refuse_name("a", ApiError(503, "etcd leader changed"))
    h.model(body(name="a", uid="ua"), settle=False)
    h.model(body(name="b", uid="ub"), settle=False)
    queue = h.controller.queue
    h.run(h.until(lambda: queue.failures(("ns", "a")) >= 4, "four failed tries of a"))
    assert h.api.status_of["b"][-1]["observedGeneration"] == 1  # b went on meanwhile
    assert ("Deployment", "b") in h.api.applies
    delays = [queue.backoff.delay_s(n) for n in range(5)]
    assert delays == [0.01, 0.02, 0.04, 0.08, 0.08]  # doubling, capped
    h.api.refuse = None
    h.settle()
    assert h.stored("Deployment", "a")["metadata"]["ownerReferences"][0]["uid"] == "ua"
    assert queue.failures(("ns", "a")) == 0  # recovered: the next failure starts afresh


def test_a_model_is_reconciled_once_per_generation_and_its_own_echoes_are_ignored(
    h: Harness,
) -> None:
    h.model(body(), None)  # the listing after a start
    assert len(h.api.applies) == len(CHILDREN)
    reconciles = len(h.reconciles)
    h.model(body(), "MODIFIED")  # the echo of its own status patch
    assert len(h.reconciles) == reconciles
    h.model(body({"model": "stub", "replicas": 2}, generation=2), "MODIFIED")
    assert len(h.api.applies) == 2 * len(CHILDREN)
    record = h.record()
    assert record is not None and record.generation == 2
    h.model(body(generation=2), "DELETED")
    assert h.forgotten()


def test_a_model_created_again_under_its_name_is_reconciled_in_either_order(h: Harness) -> None:
    """kopf gives each object (uid) its own worker: the new one's ADDED can come first."""
    h.model(body())
    applies = len(h.api.applies)
    h.model(body(uid="u2"), "ADDED")  # generation 1 as well
    assert len(h.api.applies) == applies + len(CHILDREN)
    owners = h.stored("Deployment")["metadata"]["ownerReferences"]
    assert [owner["uid"] for owner in owners] == ["u2"]
    h.model(body(), "DELETED")  # the old one's deletion, seen late
    h.model(body(), "MODIFIED")  # and an older event of it
    record = h.record()
    assert record is not None and record.owner.uid == "u2"
    assert len(h.api.applies) == applies + len(CHILDREN)


def test_a_model_deleted_and_created_again_gets_fresh_children(h: Harness) -> None:
    h.model(body())
    h.model(body(), "DELETED")
    h.api.remove(DEPLOYMENT, "m")  # garbage collection
    h.api.remove(SERVICE, "m")
    h.settle()
    assert h.forgotten()
    h.model(body({"model": "stub", "replicas": 2}, uid="u2"))
    for kind in ("Deployment", "Service"):
        owners = h.stored(kind)["metadata"]["ownerReferences"]
        assert [owner["uid"] for owner in owners] == ["u2"]
    assert h.stored("Deployment")["spec"]["replicas"] == 2
    assert h.events.count(("Normal", "Created")) == 2
    assert h.api.statuses[-1]["observedGeneration"] == 1


def test_a_reconcile_in_flight_acts_on_the_spec_of_its_time_and_then_on_the_latest(
    h: Harness,
) -> None:
    """A spec change and a deleted child while a reconcile waits for the API server: the
    next reconcile reads the latest spec, never an older one handed over."""
    h.model(body())
    h.api.gate = asyncio.Event()
    h.model(body({"model": "stub", "replicas": 2}, generation=2), "MODIFIED", settle=False)
    h.run(h.until(lambda: len(h.reconciles) >= 2, "a reconcile in flight"))
    h.model(body({"model": "stub", "replicas": 3}, generation=3), "MODIFIED", settle=False)
    h.api.remove(SERVICE, "m")
    h.api.gate.set()
    h.settle()
    assert h.stored("Deployment")["spec"]["replicas"] == 3  # not rolled back to 2
    assert "m" in {name for kind, name in h.api.objects if kind == "Service"}
    assert h.api.statuses[-1]["observedGeneration"] == 3


def test_a_drift_reconcile_that_waited_while_its_model_was_deleted_recreates_nothing(
    h: Harness,
) -> None:
    """Garbage collection deletes the children as the model goes: that is no drift."""
    h.model(body())
    applies = len(h.api.applies)
    h.api.remove(DEPLOYMENT, "m")  # collected: its event is queued ...
    h.model(body(), "DELETED", settle=False)  # ... and the model's deletion comes first
    h.settle()
    assert len(h.api.applies) == applies
    assert h.forgotten()


def test_a_status_refresh_that_waited_while_its_model_was_deleted_patches_nothing() -> None:
    h = Harness(status_delay_s=0.05)
    try:
        h.model(body())
        patches = len(h.api.statuses)
        h.api.put(POD, pod("m", "m-1", "Unschedulable", "0/2 nodes are available"))
        h.model(body(), "DELETED", settle=False)  # while the refresh waits for its delay
        h.settle()
        assert len(h.api.statuses) == patches
        assert h.forgotten()
    finally:
        h.close()


def test_a_reconcile_in_flight_when_its_model_is_deleted_leaves_nothing_behind(
    h: Harness,
) -> None:
    h.model(body())
    h.api.gate = asyncio.Event()
    h.model(body({"model": "stub", "replicas": 2}, generation=2), "MODIFIED", settle=False)
    h.run(h.until(lambda: len(h.reconciles) >= 2, "a reconcile in flight"))
    h.model(body(generation=2), "DELETED", settle=False)
    h.api.gate.set()
    h.settle()
    assert h.forgotten()


def test_a_model_found_gone_gets_no_more_children_though_its_deletion_was_missed(
    h: Harness,
) -> None:
    """kopf relists after "410 Gone" without reporting what was deleted meanwhile."""
    h.model(body())
    h.api.refuse_status = ApiError(404, 'texttoimagemodels.tti.dev "m" not found')
    h.api.put(POD, pod("m", "m-1", "Unschedulable", "0/2 nodes are available"))
    h.settle()  # the status patch answers 404
    applies = len(h.api.applies)
    h.api.remove(DEPLOYMENT, "m")  # garbage collection, reported by the watch
    h.settle()
    h.model(body(), "MODIFIED")  # an older event of the model, queued before its deletion
    assert len(h.api.applies) == applies
    assert h.forgotten()
    assert h.controller.queue.failures(("ns", "m")) == 0


def test_a_model_deleted_meanwhile_gets_no_scheduled_retry(h: Harness) -> None:
    h.model(body())
    h.api.refuse_status = ApiError(503, "API server unreachable")
    h.api.put(POD, pod("m", "m-1", "Unschedulable", "0/2 nodes are available"))
    h.run(h.until(lambda: h.controller.queue.failures(("ns", "m")) >= 1, "a failed refresh"))
    h.model(body(), "DELETED", settle=False)
    h.api.refuse_status = None
    h.settle()  # the retry finds nothing to do
    assert h.api.statuses[-1]["phase"] != "Unschedulable"
    assert h.forgotten()


def test_a_refused_edit_keeps_showing_the_pods_that_still_serve(h: Harness) -> None:
    h.model(body())
    ready = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 1}
    h.api.edit(DEPLOYMENT, "m", lambda d: d.update(status=ready), spec=False)
    h.settle()
    h.api.refuse = ApiError(422, 'Deployment.apps "m" is invalid')
    h.model(body({"model": "stub", "imageFormat": "webp"}, generation=2), "MODIFIED")
    status = h.api.statuses[-1]
    assert status["phase"] == "Degraded"
    assert (status["readyReplicas"], status["ready"]) == (1, "1/1")


def test_a_deleting_resource_is_left_to_garbage_collection(h: Harness) -> None:
    h.model(body(deleting=True))
    assert h.api.applies == [] and h.api.statuses == []


def test_a_write_not_yet_shown_by_the_watch_is_not_written_again(h: Harness) -> None:
    """Between an apply and its watch event the cache lacks the child: that is lag, not a
    deletion (one reapply per model under a burst, were it taken for one)."""
    h.api.lagging = True
    h.model(body(), settle=False)
    h.settle(waiting_ok=True)
    h.enqueue(settle=False)  # a pod event, say, before the Deployment's and Service's own
    h.settle(waiting_ok=True)  # it asks to look again later, should the events never come
    assert len(h.api.applies) == len(CHILDREN)
    h.api.flush()
    h.settle()
    assert len(h.api.applies) == len(CHILDREN)


# Deleting.


def test_the_operator_deletes_no_deployment_or_service_not_even_an_owned_one_it_did_not_build(
    h: Harness,
) -> None:
    """They go with their model by garbage collection; the RBAC has no `delete` on them."""
    h.model(body())
    extra = owned_by(h.stored("Service"), uid="u")
    extra["metadata"] = {**extra["metadata"], "name": "m-extra"}
    del extra["metadata"]["uid"]
    h.api.put(SERVICE, extra)
    h.enqueue()
    assert ("Service", "m-extra") in h.api.objects
    assert h.api.deletes == []


def test_network_policies_turned_off_the_operator_deletes_the_ones_it_made() -> None:
    first = Harness()
    api = first.api
    try:
        first.model(body())
        assert ("NetworkPolicy", "m") in api.objects
    finally:
        first.close()
    api.loop = None

    second = Harness(api=api, network_policies=False)  # restarted with the setting off
    try:
        for (kind_name, _), obj in list(api.objects.items()):  # the informer's first listing
            kind = {k.kind: k for k in (DEPLOYMENT, SERVICE, NETWORK_POLICY, CONFIG_MAP)}[kind_name]
            second.observe(kind, None, obj)
        second.model(body(), None)
        assert api.deletes == [("NetworkPolicy", "m")]
        assert ("NetworkPolicy", "m") not in api.objects
        assert {("Deployment", "m"), ("Service", "m")} <= set(api.objects)
        assert ("Normal", "Deleted") in second.events
        second.enqueue()
        assert len(api.deletes) == 1
    finally:
        second.close()


def test_a_network_policy_the_model_does_not_own_is_never_deleted() -> None:
    h = Harness(network_policies=False)
    try:
        h.model(body())
        theirs = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy"}
        h.api.put(NETWORK_POLICY, owned_by({**theirs, "metadata": {"name": "m"}}, uid="other"))
        unowned = {**theirs, "metadata": {"name": "m-own", "labels": labels("m")}}
        h.api.put(NETWORK_POLICY, unowned)  # our labels, no owner
        h.model(body({"model": "stub", "replicas": 2}, generation=2), "MODIFIED")
        assert h.api.deletes == []
        assert {("NetworkPolicy", "m"), ("NetworkPolicy", "m-own")} <= set(h.api.objects)
    finally:
        h.close()


def test_a_hand_deleted_network_policy_is_put_back(h: Harness) -> None:
    h.model(body())
    applies = len(h.api.applies)
    h.api.remove(NETWORK_POLICY, "m")
    h.settle()
    assert h.api.applies[applies:] == [("NetworkPolicy", "m")]
    h.api.edit(NETWORK_POLICY, "m", lambda n: n["spec"].update(ingress=[{}]), spec=True)
    h.settle()  # a hand edit that would let everyone in
    assert h.api.applies[applies + 1 :] == [("NetworkPolicy", "m")]
    assert {} not in h.stored("NetworkPolicy")["spec"]["ingress"]


# A restart: a new process with nothing in memory, and the cluster as the old one left it.


def test_an_operator_restarted_mid_way_converges() -> None:
    first = Harness()
    api = first.api
    first.model(body(name="settled", uid="u1"))
    api.gate = asyncio.Event()  # the next writes hang: the process dies with them in flight
    first.model(body(name="started", uid="u2"), settle=False)
    first.model(body({"model": "stub", "replicas": 2}, generation=2, name="settled", uid="u1"),
                "MODIFIED", settle=False)  # fmt: skip
    first.run(first.until(lambda: len(first.reconciles) >= 3, "both in flight"))
    first.close()
    api.gate, api.loop = None, None  # no watch sees what happens while it is down
    api.remove(SERVICE, "settled")  # and a child deleted while it was down

    second = Harness(api=api)
    try:
        # The informer's first listing.
        for kind in (DEPLOYMENT, SERVICE, NETWORK_POLICY, CONFIG_MAP):
            for (each, _name), obj in list(api.objects.items()):
                if each == kind.kind:
                    second.observe(kind, None, obj)
        second.model(body(generation=2, name="settled", uid="u1", spec={"model": "stub",
                      "replicas": 2}), None, settle=False)  # fmt: skip
        second.model(body(name="started", uid="u2"), None)
        assert api.objects["Deployment", "settled"]["spec"]["replicas"] == 2
        assert ("Service", "settled") in api.objects
        assert ("Deployment", "started") in api.objects and ("Service", "started") in api.objects
        assert api.status_of["settled"][-1]["observedGeneration"] == 2
        assert api.status_of["started"][-1]["observedGeneration"] == 1
    finally:
        second.close()


# The API client's errors, against a real HTTP server on a loopback port standing in for a
# proxy in front of the API server.


async def refused_by(status: int, body: str, content_type: str) -> ApiError:
    """The ApiError of a status patch answered with `status` and `body`."""

    async def handle(_: web.Request) -> web.Response:
        return web.Response(status=status, text=body, content_type=content_type)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    client = KubeClient("test")
    await client.connect(kopf.ConnectionInfo(server=f"http://127.0.0.1:{port}"))
    try:
        with pytest.raises(ApiError) as raised:
            await client.patch_status("ns", "m", {"phase": "Ready"})
        return raised.value
    finally:
        await client.close()
        await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "body", "content_type", "message"),
    [
        (502, "<html><body><h1>502 Bad Gateway</h1></body></html>", "text/html", "Bad Gateway"),
        (503, "", "text/plain", "Service Unavailable"),
        (200, "<html>login</html>", "text/html", "not a JSON object"),
    ],
    ids=["html-502", "empty-503", "html-200"],
)
def test_an_answer_that_is_not_json_is_an_api_error_worth_a_retry(
    status: int, body: str, content_type: str, message: str
) -> None:
    error = asyncio.run(refused_by(status, body, content_type))
    assert error.status == (status if status >= 400 else 502)
    assert message in error.message
    assert not error.permanent


def test_memory_api_is_a_kube_client() -> None:
    """The tests' API keeps the client's signatures (mypy checks the overrides)."""
    assert issubclass(MemoryApi, KubeClient)
