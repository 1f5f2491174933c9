"""FastAPI dependencies shared by the routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tti_server.engine import Engine
from tti_server.errors import NotReady
from tti_server.service import Service


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


def get_engine(service: Annotated[Service, Depends(get_service)]) -> Engine:
    """The engine, or 503 while the model is loading (or failed to load)."""
    if service.engine is None:
        raise NotReady(service.load_error or "model: still loading and warming up; retry shortly")
    return service.engine


ServiceDep = Annotated[Service, Depends(get_service)]
EngineDep = Annotated[Engine, Depends(get_engine)]
