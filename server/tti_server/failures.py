"""Every error the service tells a client: what went wrong, never how a transport says it.

The request checks, the service and the engine raise these; each transport maps
them to its own codes in one table (`errors.HTTP_STATUS`, `grpc_api.server.GRPC_CODE`),
where an error's nearest listed class wins. Every message is safe to show to
clients and names the field at fault.

A backend's own errors (`backends.base.BackendOutOfMemory`, `ModelLoadError`) are
not here: they are what a backend tells the server, which turns them into these.
"""

from __future__ import annotations

from typing import TypeVar

V = TypeVar("V")


class ServiceError(Exception):
    """A request the server refuses or cannot serve."""


# The request itself


class InvalidInput(ServiceError):
    """A value the server does not accept (too large, malformed, missing)."""


class UnknownModel(ServiceError):
    """The request names a model this server does not serve."""


# The server's state


class NotReady(ServiceError):
    """The model is still loading and warming up, or failed to load."""


# Serving an accepted request (the engine)


class EngineError(ServiceError):
    """A request the engine could not serve."""


class QueueFull(EngineError):
    """Too many requests are waiting; try again shortly."""


class GenerationTimeout(EngineError):
    """The request did not finish within the request timeout."""


class QueueTimeout(GenerationTimeout):
    """The request timed out still waiting for a worker: a retry may find one free."""


class OutOfMemory(EngineError):
    """The device ran out of memory for the batch this request was in."""


class GenerationFailed(EngineError):
    """The backend raised while generating the batch this request was in."""


class AdapterRemoved(UnknownModel, EngineError):
    """The request's adapter was removed while the request waited: told as an unknown
    model is, since a retry will not find it either."""


class EngineStopped(EngineError):
    """The engine is shutting down."""


def lookup(table: dict[type[ServiceError], V], error: ServiceError) -> V:
    """The entry for the error's class or its nearest listed base class."""
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    raise KeyError(type(error).__name__)
