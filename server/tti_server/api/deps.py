"""Lookups shared by the routes.

Routes take the `Request` and call these instead of declaring FastAPI
dependencies: on the generation path each dependency costs tens of
microseconds of dependency solving, a measurable share of a stub request.
"""

from __future__ import annotations

from fastapi import Request

from tti_server.service import Service


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service
