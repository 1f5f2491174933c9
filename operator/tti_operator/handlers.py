"""kopf registrations: thin handlers that delegate to the `Reconciler`.

Triggers: every event of a model (kopf's watch), and every event of the Deployments,
Services and Pods it owns (the lean watches of `informer.Children`, found through the
`tti.dev/model` label, filtered server-side, which keep a small summary of each child, so a
status refresh costs no API read).

The models take a plain event handler, not kopf's create/update/resume handlers: the
reconcile is level-based and idempotent, so the generation is all the change detection it
needs, and kopf's change handlers would cost an annotation patch (one more API write and
one more watch event) per model and a diff of every event. There is deliberately no delete
handler either: kopf would add a finalizer for it, and children go away by owner-reference
garbage collection even while the operator is down.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Iterator
from typing import Any, cast

import kopf

from tti_operator.informer import Children
from tti_operator.kube import KubeClient
from tti_operator.reconciler import Key, ModelRecord, Reconciler, Views
from tti_operator.settings import OperatorSettings
from tti_operator.spec import GROUP, PLURAL, VERSION

MODELS = (GROUP, VERSION, PLURAL)


def configure(settings: kopf.OperatorSettings, ours: OperatorSettings) -> None:
    """kopf's settings: everything under tti.dev, no cluster-scoped needs, no peering."""
    # Event handlers store nothing on the models; were that to change, it goes under tti.dev.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
    settings.persistence.diffbase_storage = LeanDiffBaseStorage(
        prefix=GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{GROUP}/finalizer"  # never added: no delete handlers
    settings.peering.standalone = True  # one operator replica; no peering objects to read
    # No CRD/namespace watching (cluster-scoped): the served namespaces are listed
    # explicitly, and the CRD must exist before the operator starts.
    settings.scanning.disabled = True
    settings.posting.reporting_component = "tti-operator"
    # Only kopf's warnings and errors become Kubernetes Events; the operator posts its own
    # Created/Updated/Ready/Failed.
    settings.posting.level = logging.WARNING
    settings.posting.event_name_prefix = "tti-operator-"
    settings.networking.error_backoffs = RetryForever()
    if ours.max_workers:
        settings.queueing.worker_limit = ours.max_workers


class RetryForever(Iterable[float]):
    """kopf's delays between retries of a failed API request, then every 30 s for good.

    kopf gives up after eight retries (about a minute), and a watch that gives up stops the
    whole operator: one listed namespace it may not read (its RoleBinding not applied yet, a
    typo in the list) would take down the models of every other namespace with it, in a
    crash loop. Retrying serves the others meanwhile and picks the namespace up once the
    binding exists; the log says what is refused on every attempt.
    """

    def __iter__(self) -> Iterator[float]:
        return itertools.chain((1, 1, 2, 3, 5, 8, 13, 21), itertools.repeat(30.0))


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff base, with the same essence built at a fraction of the cost.

    kopf builds the essence on every event of a model, even with only event handlers (its
    diff serves change handlers and daemons alike), and its build deep-copies the whole
    body before deleting metadata and status, most of it (managedFields alone can be half).
    Those are left out here before kopf's own build runs, except the parts it reads back.
    """

    def build(
        self, *, body: kopf.Body, extra_fields: Iterable[kopf.FieldSpec] | None = None
    ) -> kopf.BodyEssence:
        extra = list(extra_fields or [])
        return super().build(body=essential_part(body, extra), extra_fields=extra)


def essential_part(body: kopf.Body, extra_fields: list[kopf.FieldSpec]) -> kopf.Body:
    """The body less what kopf's essence drops: status, and metadata but for the kept keys."""
    wanted = {_top_key(field) for field in extra_fields}
    meta = body.get("metadata", {})
    slim: dict[str, Any] = {k: v for k, v in body.items() if k not in _DROPPED or k in wanted}
    if "metadata" not in wanted:
        slim["metadata"] = {k: meta[k] for k in _KEPT_METADATA if k in meta}
    return kopf.Body(cast(kopf.RawBody, slim))


def _top_key(field: kopf.FieldSpec) -> str | None:
    if isinstance(field, str):
        return field.split(".")[0]
    return field[0] if field else None


#: What kopf's essence never keeps from a body, unless a handler watches a field there.
_DROPPED = frozenset({"metadata", "status"})
#: Labels and annotations are in the essence; kind and owners name the storage key.
_KEPT_METADATA = ("labels", "annotations", "ownerReferences")


def reconciler(memo: kopf.Memo) -> Reconciler:
    return cast(Reconciler, memo["reconciler"])


def children(memo: kopf.Memo) -> Children:
    return cast(Children, memo["children"])


def views(memo: kopf.Memo) -> Views:
    watched = children(memo)
    return Views(deployments=watched.deployments, pods=watched.pods)


# Every kopf callback here is async: kopf runs a plain function in a thread pool, a
# hand-off per call.


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Under plain `kopf run` there is no CLI to set things up: do it here.
    if "reconciler" not in memo:
        ours = OperatorSettings.model_validate({})
        configure(settings, ours)
        memo["reconciler"] = Reconciler(ours, KubeClient(ours.field_manager))
    ours = reconciler(memo).settings

    async def on_child_event(
        kind: str, key: Key, event_type: str | None, child: dict[str, Any]
    ) -> None:
        await child_event(memo, kind, key, event_type, child)

    # Started by `login`, once there are credentials.
    memo["children"] = Children(reconciler(memo).client, ours.namespaces, on_child_event)


@kopf.on.login()
async def login(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise kopf.LoginError("no credentials: neither a service account nor a kubeconfig")
    await reconciler(memo).client.connect(info)
    children(memo).start()
    return info


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await children(memo).close()
    await reconciler(memo).close()


@kopf.on.probe(id="models")
async def probe_models(memo: kopf.Memo, **_: Any) -> int:
    """How many models this operator serves, in the liveness endpoint's answer."""
    return len(reconciler(memo).models)


# The resource itself: its first sighting (creation, or the listing after a start) and every
# spec change reconcile it; the rest (its own status patches) only refresh the record.


@kopf.on.event(*MODELS)
async def model_event(
    type: str | None, body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    # Know the existing children in its namespace before judging them.
    await children(memo).synced(namespace or "")
    await reconciler(memo).model_changed(type, ModelRecord.from_body(body), views(memo))


# The children: any change refreshes the owner's status; a hand edit or delete is undone.


async def child_event(
    memo: kopf.Memo, kind: str, key: Key, event_type: str | None, child: dict[str, Any]
) -> None:
    record = reconciler(memo).models.get(key)
    if record is None:
        return  # its model is gone (garbage collection follows) or not ours
    await reconciler(memo).child_changed(record, kind, event_type, child, views(memo))
