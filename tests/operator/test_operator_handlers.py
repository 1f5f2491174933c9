"""The kopf wiring that is pure enough to test without a cluster."""

from __future__ import annotations

import inspect

import kopf
import pytest

from tti_operator import handlers
from tti_operator.settings import OperatorSettings


def test_configure_keeps_kopfs_names_under_tti_dev_and_posts_only_its_warnings() -> None:
    settings = kopf.OperatorSettings()
    handlers.configure(settings, OperatorSettings.model_validate({}))
    assert settings.persistence.finalizer.startswith("tti.dev/")
    assert settings.posting.level >= 30  # logging.WARNING


def test_models_take_only_event_handlers_so_kopf_writes_nothing_on_them() -> None:
    """No create/update/resume handler: kopf then neither diffs each event nor patches its
    last-handled-configuration annotation onto every model (one API write per model)."""
    registry = kopf.get_default_registry()
    resource = kopf.Resource("tti.dev", "v1alpha1", "texttoimagemodels", namespaced=True)
    # kopf has no public view of its registry; these are the two it consults per event.
    assert registry._watching.has_handlers(resource)
    assert not registry._changing.has_handlers(resource)
    assert not registry._indexing.has_handlers(resource)


@pytest.mark.parametrize(
    "callback",
    [
        handlers.model_event,
        handlers.probe_models,
        handlers.startup,
        handlers.login,
        handlers.cleanup,
        handlers.child_event,
    ],
)
def test_every_per_event_callback_is_async(callback: object) -> None:
    """kopf hands a plain function to a thread pool on every call."""
    assert inspect.iscoroutinefunction(callback)
