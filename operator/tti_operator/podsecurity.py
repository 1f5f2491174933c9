"""How every pod the operator makes runs: as the server image's fixed non-root user, with
the restricted Pod Security Standard's settings (read-only root, no privileges)."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]

#: The server image's fixed non-root user (Dockerfile.server).
SERVER_UID = 10001
_AS_SERVER_USER: Obj = {
    "runAsNonRoot": True,
    "runAsUser": SERVER_UID,
    "runAsGroup": SERVER_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def container_security_context() -> Obj:
    return {
        **_AS_SERVER_USER,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }


def pod_security_context(*, keep_owned_volumes: bool = False) -> Obj:
    """fsGroup: volumes (the caches, the model cache's claim) are writable by that user.
    `keep_owned_volumes`: a volume whose top folder already has that group is left as it
    is (`OnRootMismatch`), rather than every file of it walked at each pod start."""
    context: Obj = {**_AS_SERVER_USER, "fsGroup": SERVER_UID}
    if keep_owned_volumes:
        context["fsGroupChangePolicy"] = "OnRootMismatch"
    return context
