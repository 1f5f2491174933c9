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


def pod_security_context() -> Obj:
    # fsGroup: volumes (the caches, the model cache's claim) are writable by that user.
    return {**_AS_SERVER_USER, "fsGroup": SERVER_UID}
