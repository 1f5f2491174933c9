"""The contracts hold on both sides: what one program sends, the other serves or reads."""

from __future__ import annotations

from starlette.routing import Route as StarletteRoute

from tti_contracts import metrics as names
from tti_contracts.api import declared_replicas
from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE, FORWARDED, OPENAI_IMAGES
from tti_server.app import create_app
from tti_server.settings import Settings


def test_the_routes_are_those_the_clients_call() -> None:
    """Written out once here: the tests use the constants, and caikit's and OpenAI's
    clients call these paths, so a change to a constant must fail somewhere."""
    assert CAIKIT_TEXT_TO_IMAGE == "/api/v1/task/text-to-image"
    assert OPENAI_IMAGES == "/v1/images/generations"


def test_every_forwarded_route_is_a_generation_route_of_the_server() -> None:
    served = {
        route.path
        for route in create_app(Settings(model="stub")).routes
        if isinstance(route, StarletteRoute) and "POST" in (route.methods or ())
    }
    assert FORWARDED.keys() <= served


def test_the_counter_the_autoscaler_reads_is_named_as_prometheus_writes_it() -> None:
    assert names.sample_name(names.REQUEST_LOAD) == "tti_request_load_seconds_total"


def test_replicas_as_written_or_the_crds_default() -> None:
    assert declared_replicas({}) == 1
    assert declared_replicas({"replicas": 0}) == 0
    assert declared_replicas({"replicas": 3}) == 3
    for nonsense in ("2", -1, None, True, 1.5):
        assert declared_replicas({"replicas": nonsense}) == 1
