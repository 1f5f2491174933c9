"""Transport-neutral errors: what went wrong with a request, never how a transport says it.

The service, the request checks and the engine raise these; each transport maps
them to its own codes in one table (`errors.HTTP_STATUS`, `grpc_api.server.GRPC_CODE`).
Every message is safe to show to clients and names the field at fault.
"""

from __future__ import annotations

from typing import TypeVar

V = TypeVar("V")


class ServiceError(Exception):
    """A request the server refuses or cannot serve."""


class InvalidInput(ServiceError):
    """A value the server does not accept (too large, malformed, missing)."""


class UnknownModel(ServiceError):
    """The request names a model this server does not serve."""


class NotReady(ServiceError):
    """The model is still loading and warming up, or failed to load."""


def lookup(table: dict[type[ServiceError], V], error: ServiceError) -> V:
    """The entry for the error's class or its nearest listed base class."""
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    raise KeyError(type(error).__name__)
