"""The reconcile loop's decisions, with an in-memory API in place of the cluster.

What is checked here is the operator's own logic (when to reapply, when to patch the
status, which Events to post, how failures surface); the real API server, apply
semantics and garbage collection are exercised in test_operator_cluster.py.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import kopf
import pytest
from aiohttp import web

from tti_operator.kube import ApiError, KubeClient
from tti_operator.reconciler import ModelRecord, Reconciler, Views
from tti_operator.settings import OperatorSettings
from tti_operator.status import DeploymentState, PodState, Problem, deployment_state

Obj = dict[str, Any]


class MemoryApi(KubeClient):
    """Stores applied objects; bumps a Deployment's generation when its spec changes."""

    def __init__(self) -> None:
        super().__init__("test")
        self.objects: dict[tuple[str, str], Obj] = {}
        self.applies: list[tuple[str, str]] = []
        self.statuses: list[Obj] = []
        self.refuse: Exception | None = None
        self.refuse_status: Exception | None = None

    async def apply(self, obj: Obj) -> tuple[bool, Obj]:
        if self.refuse is not None:
            raise self.refuse
        key = (obj["kind"], obj["metadata"]["name"])
        self.applies.append(key)
        old = self.objects.get(key)
        stored = copy.deepcopy(obj)
        generation = 1 if old is None else old["metadata"]["generation"]
        if old is not None and old["spec"] != obj["spec"]:
            generation += 1
        stored["metadata"]["generation"] = generation
        stored["metadata"]["resourceVersion"] = str(len(self.applies))
        self.objects[key] = stored
        return old is None, stored

    async def patch_status(self, namespace: str, name: str, status: Obj) -> None:
        if self.refuse_status is not None:
            raise self.refuse_status
        self.statuses.append(status)


def resource(spec: Obj | None = None, generation: int = 1, uid: str = "u") -> ModelRecord:
    """A TextToImageModel `ns/m` as its latest event shows it."""
    return ModelRecord.from_body(
        {
            "metadata": {"name": "m", "namespace": "ns", "uid": uid, "generation": generation},
            "spec": spec or {"model": "stub"},
        }
    )


class Harness:
    def __init__(self) -> None:
        self.api = MemoryApi()
        self.events: list[tuple[str, str]] = []
        self.reconciler = Reconciler(
            OperatorSettings.model_validate({"status_delay_s": 0}),
            self.api,
            event=lambda _res, kind, reason, _msg: self.events.append((kind, reason)),
        )
        self.pods: list[PodState] = []

    def views(self) -> Views:
        """What the watches would hold: the API's Deployment and the test's pods."""
        deployments: dict[tuple[str, str], list[DeploymentState]] = {}
        if ("Deployment", "m") in self.api.objects:
            deployments[("ns", "m")] = [deployment_state(self.api.objects["Deployment", "m"])]
        return Views(deployments=deployments, pods={("ns", "m"): self.pods})

    def event(self, record: ModelRecord, event_type: str | None = "ADDED") -> None:
        """An event of the model, as kopf delivers it; scheduled retries are left pending."""
        asyncio.run(self.reconciler.model_changed(event_type, record, self.views()))

    def reconcile(self, record: ModelRecord) -> None:
        self.reconciler.models[record.key] = record
        asyncio.run(self.reconciler.reconcile(record, self.views()))

    def child(self, record: ModelRecord, kind: str, event_type: str | None, body: Obj) -> None:
        async def changed_then_settled() -> None:
            await self.reconciler.child_changed(record, kind, event_type, body, self.views())
            await asyncio.gather(*self.reconciler.pending.values())

        self.reconciler.models[record.key] = record
        asyncio.run(changed_then_settled())

    def stored(self, kind: str) -> Obj:
        return self.api.objects[kind, "m"]


def test_create_applies_both_children_posts_created_and_a_status() -> None:
    h = Harness()
    h.reconcile(resource())
    assert sorted(h.api.applies) == [("Deployment", "m"), ("Service", "m")]
    assert h.events == [("Normal", "Created")]
    assert len(h.api.statuses) == 1
    assert h.api.statuses[0]["phase"] == "Progressing"
    assert h.api.statuses[0]["observedGeneration"] == 1


def test_every_event_posted_is_logged_too(caplog: pytest.LogCaptureFixture) -> None:
    h = Harness()
    with caplog.at_level(logging.INFO, logger="tti_operator.reconciler"):
        h.reconcile(resource())
        h.reconcile(resource({"model": "dalle"}, generation=2))
    logged = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert ("INFO", "ns/m: Created: created Deployment and Service m") in logged
    assert any(level == "WARNING" and "ns/m: Failed: InvalidSpec" in m for level, m in logged)


def test_reconciling_an_unchanged_resource_writes_no_status_and_posts_nothing() -> None:
    h = Harness()
    h.reconcile(resource())
    h.events.clear()
    h.reconcile(resource())
    assert len(h.api.statuses) == 1
    assert h.events == []


def test_a_spec_change_updates_the_deployment_and_posts_updated() -> None:
    h = Harness()
    h.reconcile(resource())
    h.reconcile(resource({"model": "stub", "imageFormat": "webp"}, generation=2))
    assert h.stored("Deployment")["metadata"]["generation"] == 2
    assert ("Normal", "Updated") in h.events
    assert h.api.statuses[-1]["observedGeneration"] == 2


def test_the_operators_own_writes_are_not_drift() -> None:
    h = Harness()
    record = resource()
    h.reconcile(record)
    applies = len(h.api.applies)
    h.child(record, "Deployment", "MODIFIED", h.stored("Deployment"))
    h.child(record, "Service", "MODIFIED", h.stored("Service"))
    assert len(h.api.applies) == applies


def test_a_hand_edited_or_deleted_child_is_reapplied() -> None:
    h = Harness()
    record = resource()
    h.reconcile(record)
    edited = copy.deepcopy(h.stored("Deployment"))
    edited["metadata"]["generation"] += 1
    h.child(record, "Deployment", "MODIFIED", edited)
    assert h.api.applies[-2:] == [("Deployment", "m"), ("Service", "m")]
    applies = len(h.api.applies)
    h.child(record, "Service", "DELETED", h.stored("Service"))
    assert len(h.api.applies) == applies + 2
    relabelled = copy.deepcopy(h.stored("Service"))
    relabelled["metadata"]["labels"] = {}
    h.child(record, "Service", "MODIFIED", relabelled)
    assert len(h.api.applies) == applies + 4
    orphaned = copy.deepcopy(h.stored("Deployment"))
    orphaned["metadata"]["ownerReferences"] = []
    h.child(record, "Deployment", "MODIFIED", orphaned)
    assert len(h.api.applies) == applies + 6


def test_a_child_edited_while_its_watch_was_down_is_reapplied_when_relisted() -> None:
    """A relist reports what changed meanwhile with no event type, like the first listing."""
    h = Harness()
    record = resource()
    h.child(record, "Deployment", None, {"metadata": {"generation": 7}})
    assert h.api.applies == []  # the first listing: the model's own reconcile applies it
    h.reconcile(record)
    applies = len(h.api.applies)
    h.child(record, "Deployment", None, h.stored("Deployment"))
    assert len(h.api.applies) == applies  # relisted unchanged
    edited = copy.deepcopy(h.stored("Deployment"))
    edited["metadata"]["generation"] += 1
    h.child(record, "Deployment", None, edited)
    assert len(h.api.applies) == applies + 2


def test_pod_events_only_refresh_the_status() -> None:
    h = Harness()
    record = resource()
    h.reconcile(record)
    applies = len(h.api.applies)
    h.pods = [PodState("m-1", False, False, Problem("Unschedulable", "0/2 nodes are available"))]
    h.child(record, "Pod", "MODIFIED", {})
    assert len(h.api.applies) == applies
    assert h.api.statuses[-1]["phase"] == "Unschedulable"
    assert ("Warning", "Unschedulable") in h.events


def test_a_burst_of_child_events_gives_one_status_patch() -> None:
    h = Harness()
    record = resource()
    h.reconcile(record)
    patches = len(h.api.statuses)
    h.pods = [PodState("m-1", False, False, Problem("CrashLoopBackOff", "exit 1"))]

    async def burst() -> None:
        for _ in range(10):
            await h.reconciler.child_changed(record, "Pod", "MODIFIED", {}, h.views())
        await asyncio.gather(*h.reconciler.pending.values())

    asyncio.run(burst())
    assert len(h.api.statuses) == patches + 1


def test_an_invalid_spec_is_a_permanent_failure_on_the_status() -> None:
    h = Harness()
    h.reconcile(resource({"model": "dalle"}))
    assert h.api.applies == []
    status = h.api.statuses[-1]
    assert status["phase"] == "Invalid"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["reason"] == "InvalidSpec" and "spec.model" in degraded["message"]
    assert ("Warning", "Failed") in h.events
    assert not h.reconciler.retrying  # nothing to retry until the spec changes


def test_a_refused_apply_is_permanent_and_an_unreachable_api_is_retried() -> None:
    h = Harness()
    h.api.refuse = ApiError(422, 'Deployment.apps "m" is invalid')
    h.reconcile(resource())
    assert h.api.statuses[-1]["phase"] == "Degraded"
    assert not h.reconciler.retrying
    h.api.refuse = ApiError(503, "API server unreachable")

    async def fail_then_retry() -> None:
        await h.reconciler.reconcile(resource(), h.views())
        assert set(h.reconciler.retrying) == {("ns", "m")}
        h.api.refuse = None
        await asyncio.gather(*h.reconciler.retrying.values())

    h.reconciler.models[("ns", "m")] = resource()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tti_operator.reconciler.RETRY_DELAY_S", 0)
        asyncio.run(fail_then_retry())
    assert h.api.applies == [("Deployment", "m"), ("Service", "m")]  # by the retry alone
    degraded = next(c for c in h.api.statuses[-1]["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "False"  # the failure clears once the apply succeeds


def retried(h: Harness, first: Callable[[], Awaitable[None]]) -> None:
    """Run `first`, which fails once; then let the API answer and the scheduled retry run."""

    async def fail_then_retry() -> None:
        await first()
        assert set(h.reconciler.retrying) == {("ns", "m")}
        h.api.refuse = h.api.refuse_status = None
        await asyncio.gather(*h.reconciler.retrying.values())

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("tti_operator.reconciler.RETRY_DELAY_S", 0)
        asyncio.run(fail_then_retry())


def test_an_unexpected_error_is_retried_not_left_until_the_next_spec_change() -> None:
    """kopf's event handlers retry nothing, and the generation is already marked handled."""
    h = Harness()
    h.api.refuse = RuntimeError("a bug, or a library's surprise")
    retried(h, lambda: h.reconciler.model_changed("ADDED", resource(), h.views()))
    assert h.api.applies == [("Deployment", "m"), ("Service", "m")]
    assert h.api.statuses[-1]["observedGeneration"] == 1


def test_a_status_refresh_that_fails_is_retried() -> None:
    """Else a model whose pods just became ready could show Progressing for good."""
    h = Harness()
    record = resource()
    h.event(record)
    h.pods = [PodState("m-1", False, False, Problem("Unschedulable", "0/2 nodes are available"))]
    h.api.refuse_status = ApiError(503, "API server unreachable")

    async def refresh_fails() -> None:
        await h.reconciler.child_changed(record, "Pod", "MODIFIED", {}, h.views())
        await asyncio.gather(*h.reconciler.pending.values())

    retried(h, refresh_fails)
    assert h.api.statuses[-1]["phase"] == "Unschedulable"


def test_a_model_is_reconciled_once_per_generation_and_its_own_echoes_are_ignored() -> None:
    h = Harness()
    h.event(resource(), None)  # the listing after a start
    applies = len(h.api.applies)
    assert applies == 2
    h.event(resource(), "MODIFIED")  # the echo of its own status patch
    assert len(h.api.applies) == applies
    h.event(resource({"model": "stub", "replicas": 2}, generation=2), "MODIFIED")
    assert len(h.api.applies) == applies + 2
    assert h.reconciler.models[("ns", "m")].generation == 2
    h.event(resource(generation=2), "DELETED")
    assert ("ns", "m") not in h.reconciler.models and not h.reconciler.observed


def test_a_model_created_again_under_its_name_is_reconciled_in_either_order() -> None:
    """kopf gives each object (uid) its own worker: the new one's ADDED can come first."""
    h = Harness()
    h.event(resource())
    applies = len(h.api.applies)
    again = resource(uid="u2")  # generation 1 as well
    h.event(again, "ADDED")
    assert len(h.api.applies) == applies + 2
    owners = h.stored("Deployment")["metadata"]["ownerReferences"]
    assert [owner["uid"] for owner in owners] == ["u2"]
    h.event(resource(), "DELETED")  # the old one's deletion, seen late
    assert h.reconciler.models[("ns", "m")] == again
    assert h.reconciler.observed[("ns", "m")] == 1


def test_a_drift_reconcile_that_waited_applies_the_latest_spec_not_the_one_it_was_handed() -> None:
    """A child event hands over the record of its time; a spec change can get the lock first."""
    h = Harness()
    old = resource()
    h.event(old)
    newer = resource({"model": "stub", "replicas": 2}, generation=2)

    async def spec_change_then_a_deleted_service_both_waiting() -> None:
        lock = h.reconciler.lock(old.key)
        await lock.acquire()  # a status refresh in flight, say
        change = asyncio.create_task(h.reconciler.model_changed("MODIFIED", newer, h.views()))
        await asyncio.sleep(0)
        service = h.stored("Service")
        drift = h.reconciler.child_changed(old, "Service", "DELETED", service, h.views())
        waiting = asyncio.create_task(drift)
        await asyncio.sleep(0)
        lock.release()
        await asyncio.gather(change, waiting)

    asyncio.run(spec_change_then_a_deleted_service_both_waiting())
    assert h.stored("Deployment")["spec"]["replicas"] == 2  # not rolled back to generation 1
    assert h.api.statuses[-1]["observedGeneration"] == 2


def forgotten(h: Harness) -> bool:
    r = h.reconciler
    memories = (r.models, r.applied, r.observed, r.failures, r.posted, r.pending)
    return not any(("ns", "m") in memory for memory in memories)


def test_a_drift_reconcile_that_waited_while_its_model_was_deleted_recreates_nothing() -> None:
    """Garbage collection deletes the children as the model goes: that is no drift."""
    h = Harness()
    record = resource()
    h.event(record)
    applies = len(h.api.applies)

    async def deleted_children_wait_while_the_model_goes() -> None:
        lock = h.reconciler.lock(record.key)
        await lock.acquire()
        gone = h.stored("Deployment")
        drift = h.reconciler.child_changed(record, "Deployment", "DELETED", gone, h.views())
        waiting = asyncio.create_task(drift)
        await asyncio.sleep(0)
        await h.reconciler.model_changed("DELETED", record, h.views())
        lock.release()
        await waiting

    asyncio.run(deleted_children_wait_while_the_model_goes())
    assert len(h.api.applies) == applies
    assert forgotten(h)


def test_a_status_refresh_that_waited_while_its_model_was_deleted_patches_nothing() -> None:
    h = Harness()
    record = resource()
    h.event(record)
    h.pods = [PodState("m-1", False, False, Problem("Unschedulable", "0/2 nodes are available"))]
    patches = len(h.api.statuses)

    async def refresh_waits_while_the_model_goes() -> None:
        await h.reconciler.child_changed(record, "Pod", "MODIFIED", {}, h.views())
        refresh = h.reconciler.pending[record.key]
        lock = h.reconciler.lock(record.key)
        await lock.acquire()
        while refresh in h.reconciler.pending.values():
            await asyncio.sleep(0)  # until its delay is over and it waits for the lock
        await h.reconciler.model_changed("DELETED", record, h.views())
        lock.release()
        await refresh

    asyncio.run(refresh_waits_while_the_model_goes())
    assert len(h.api.statuses) == patches
    assert forgotten(h)


def test_a_reconcile_in_flight_when_its_model_is_deleted_leaves_nothing_behind() -> None:
    h = Harness()
    h.event(resource())
    apply = h.api.apply

    async def deleted_meanwhile(obj: Obj) -> tuple[bool, Obj]:
        await h.reconciler.model_changed("DELETED", resource(), h.views())
        return await apply(obj)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(h.api, "apply", deleted_meanwhile)
        h.event(resource({"model": "stub", "replicas": 2}, generation=2), "MODIFIED")
    assert forgotten(h)


def test_a_model_found_gone_gets_no_more_children_though_its_deletion_was_missed() -> None:
    """kopf relists after "410 Gone" without reporting what was deleted meanwhile."""
    h = Harness()
    h.event(resource())
    h.pods = [PodState("m-1", False, False, Problem("Unschedulable", "0/2 nodes are available"))]
    h.api.refuse_status = ApiError(404, 'texttoimagemodels.tti.dev "m" not found')

    def collected() -> None:
        """Garbage collection deletes the Deployment; the child watch reports it."""
        served = h.reconciler.models[("ns", "m")]  # as `handlers.child_event` looks it up
        gone = h.stored("Deployment")
        asyncio.run(h.reconciler.child_changed(served, "Deployment", "DELETED", gone, h.views()))

    collected()  # reapplied, as the model is not known to be gone until its status patch
    applies = len(h.api.applies)
    collected()
    h.event(resource(), "MODIFIED")  # an older event of the model, queued before its deletion
    assert len(h.api.applies) == applies
    assert ("ns", "m") not in h.reconciler.retrying


def test_a_model_deleted_meanwhile_gets_no_scheduled_refresh_or_retry() -> None:
    h = Harness()
    h.event(resource())
    h.pods = [PodState("m-1", False, False, Problem("Unschedulable", "0/2 nodes are available"))]
    patches = len(h.api.statuses)

    async def pod_event_then_deleted() -> None:
        await h.reconciler.child_changed(resource(), "Pod", "MODIFIED", {}, h.views())
        h.reconciler.retrying[("ns", "m")] = asyncio.create_task(asyncio.sleep(60))
        scheduled = [*h.reconciler.pending.values(), *h.reconciler.retrying.values()]
        await h.reconciler.model_changed("DELETED", resource(), h.views())
        await asyncio.gather(*scheduled, return_exceptions=True)
        assert all(task.cancelled() for task in scheduled)

    asyncio.run(pod_event_then_deleted())
    assert len(h.api.statuses) == patches
    assert not h.reconciler.pending and not h.reconciler.retrying


def test_a_refused_edit_keeps_showing_the_pods_that_still_serve() -> None:
    h = Harness()
    h.reconcile(resource())
    h.stored("Deployment")["status"] = {"replicas": 1, "readyReplicas": 1, "updatedReplicas": 1}
    h.api.refuse = ApiError(422, 'Deployment.apps "m" is invalid')
    h.reconcile(resource({"model": "stub", "imageFormat": "webp"}, generation=2))
    status = h.api.statuses[-1]
    assert status["phase"] == "Degraded"
    assert (status["readyReplicas"], status["ready"]) == (1, "1/1")


def test_a_deleting_resource_is_left_to_garbage_collection() -> None:
    h = Harness()
    deleting = ModelRecord.from_body(
        {
            "metadata": {"name": "m", "namespace": "ns", "uid": "u", "deletionTimestamp": "t"},
            "spec": {"model": "stub"},
        }
    )
    h.child(deleting, "Deployment", "DELETED", {})
    assert h.api.applies == [] and h.api.statuses == []


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
