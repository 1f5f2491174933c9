"""Optional bearer tokens, read from a file (a mounted Secret), compared in constant time."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path


def read_tokens(path: Path) -> list[str]:
    """One token per line; blank lines and `#` comments are skipped. None is an error."""
    lines = (line.strip() for line in path.read_text().splitlines())
    tokens = [line for line in lines if line and not line.startswith("#")]
    if not tokens:
        raise ValueError(f"{path}: no token (one per line)")
    return tokens


class BearerAuth:
    def __init__(self, tokens: list[str]) -> None:
        # Digests have one length, so comparing them does not reveal a token's length.
        self._digests = [_digest(token) for token in tokens]

    def allows(self, authorization: str | None) -> bool:
        scheme, _, token = (authorization or "").partition(" ")
        given = _digest(token.strip())
        matched = False
        for digest in self._digests:  # every token is compared: no early exit
            matched |= hmac.compare_digest(given, digest)
        return matched and scheme.lower() == "bearer"


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()
