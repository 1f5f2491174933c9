"""kopf registrations: thin handlers that delegate to the `Reconciler`.

Triggers: the resource's create/update/resume, and every event of the Deployments,
Services and Pods it owns. kopf watches the models; the children are watched by the lean
watches of `informer.Children` (found through the `tti.dev/model` label, filtered
server-side), which keep a small summary of each child, so a status refresh costs no API
read. There is deliberately no delete handler: kopf would add a finalizer for it, and children
go away by owner-reference garbage collection even while the operator is down.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
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
    # Only kopf's warnings and errors become Kubernetes Events: its "Handler succeeded" and
    # "Creation is processed" would be two more API writes per model saying nothing that the
    # operator's own Created/Updated/Ready Events do not.
    settings.posting.level = logging.WARNING
    settings.posting.event_name_prefix = "tti-operator-"
    if ours.max_workers:
        settings.queueing.worker_limit = ours.max_workers


class LeanDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff base, with the same essence built at a fraction of the cost.

    kopf builds the essence on every event of a model, and its build deep-copies the whole
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


def views(memo: kopf.Memo, models: kopf.Index[Key, ModelRecord]) -> Views:
    watched = children(memo)
    return Views(models=models, deployments=watched.deployments, pods=watched.pods)


@kopf.on.startup()
async def startup(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    **kwargs: Any,
) -> None:
    # Under plain `kopf run` there is no CLI to set things up: do it here.
    if "reconciler" not in memo:
        ours = OperatorSettings.model_validate({})
        configure(settings, ours)
        memo["reconciler"] = Reconciler(ours, KubeClient(ours.field_manager))
    ours = reconciler(memo).settings

    models: kopf.Index[Key, ModelRecord] = kwargs["models"]

    async def on_child_event(
        kind: str, key: Key, event_type: str | None, child: dict[str, Any]
    ) -> None:
        await child_event(memo, models, logger, kind, key, event_type, child)

    # Started by `login`, once there are credentials; kopf passes the live models index to
    # activities too, and that same object is what the handlers get later.
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
async def probe_models(**kwargs: Any) -> int:
    """How many models this operator tracks, in the liveness endpoint's answer."""
    return len(kwargs["models"])


# Every kopf callback here is async: kopf runs a plain function in a thread pool, a
# hand-off per call.


@kopf.index(*MODELS)
async def models(body: kopf.Body, **_: Any) -> dict[Key, ModelRecord]:
    record = ModelRecord.from_body(body)
    return {record.key: record}


# The resource itself.


@kopf.on.resume(*MODELS)
@kopf.on.create(*MODELS)
@kopf.on.update(*MODELS, field="spec")
async def reconcile(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    await children(memo).synced()  # on resume, know the existing children first
    await reconciler(memo).reconcile(ModelRecord.from_body(body), views(memo, kwargs["models"]))


@kopf.on.event(*MODELS, when=lambda type, **_: type == "DELETED")
async def forget(namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
    reconciler(memo).forget((namespace or "", name))


# The children: any change refreshes the owner's status; a hand edit or delete is undone.


async def child_event(
    memo: kopf.Memo,
    models: kopf.Index[Key, ModelRecord],
    logger: logging.Logger | logging.LoggerAdapter[logging.Logger],
    kind: str,
    key: Key,
    event_type: str | None,
    child: dict[str, Any],
) -> None:
    record = next(iter(models.get(key, [])), None)
    if record is None:
        return  # its model is gone (garbage collection follows) or not ours
    try:
        await reconciler(memo).child_changed(record, kind, event_type, child, views(memo, models))
    except (kopf.PermanentError, kopf.TemporaryError) as error:
        # Already on the model's status and Events; the next event or resume retries.
        logger.warning("could not reconcile %s/%s after a %s event: %s", *key, kind, error)
