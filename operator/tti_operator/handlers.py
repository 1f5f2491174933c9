"""kopf registrations: login, liveness, the models' event handler, and kopf's settings.

kopf's whole part in the operator is here: it logs in (and hands the credentials to our
client), serves the liveness endpoint, and delivers each model event to `model_event`,
which only passes it to the `Controller` (it enqueues the model when the event says more
than the echo of a status patch). Everything else (the children's watches, the work queue,
the reconcile, the autoscaler) is the controller's. kopf's diff-base storage is patched
for speed (`LeanDiffBaseStorage`).

The one way to start the operator is the `tti-operator` command (`cli.main`): it configures
kopf (`configure`) and builds the `Controller` into kopf's memo before `kopf.run`; a plain
`kopf run` of this module stops at start-up, saying so.

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

from tti_contracts.api import GROUP, PLURAL, VERSION
from tti_operator.controller import Controller
from tti_operator.settings import OperatorSettings

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


def controller(memo: kopf.Memo) -> Controller:
    return cast(Controller, memo["controller"])


# Every kopf callback here is async: kopf runs a plain function in a thread pool, a
# hand-off per call.


@kopf.on.startup()
async def startup(memo: kopf.Memo, **_: Any) -> None:
    if "controller" not in memo:  # kopf's own settings would be left unconfigured too
        raise kopf.PermanentError("start the operator with `tti-operator`, not `kopf run`")
    controller(memo).start()


@kopf.on.login()
async def login(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    info = kopf.login_with_service_account(settings=settings) or kopf.login_with_kubeconfig(
        settings=settings
    )
    if info is None:
        raise kopf.LoginError("no credentials: neither a service account nor a kubeconfig")
    await controller(memo).client.connect(info)
    controller(memo).watch()  # idempotent: kopf logs in again after a 401
    return info


@kopf.on.cleanup()
async def cleanup(memo: kopf.Memo, **_: Any) -> None:
    await controller(memo).close()


@kopf.on.probe(id="models")
async def probe_models(memo: kopf.Memo, **_: Any) -> int:
    """How many models this operator serves, in the liveness endpoint's answer."""
    return len(controller(memo).store)


@kopf.on.event(*MODELS)
async def model_event(
    type: str | None, body: kopf.Body, namespace: str | None, memo: kopf.Memo, **_: Any
) -> None:
    # The first reconcile after a start must see the existing children in its namespace.
    await controller(memo).informer.synced(namespace or "")
    controller(memo).model_changed(type, body)
