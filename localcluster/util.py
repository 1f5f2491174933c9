"""What the launcher, the real node and the image builder share: their progress line, free
ports, and waiting on a condition with a deadline. Stdlib only, like its callers."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path


def log(message: str) -> None:
    """One progress line, on stderr (stdout stays for what a command prints as its result)."""
    print(f"==> {message}", file=sys.stderr, flush=True)


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free on 127.0.0.1 (all held open at once, so distinct)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def wait_for(
    what: str,
    probe: Callable[[], bool],
    timeout_s: float,
    error: type[Exception],
    log_file: Path | None = None,
) -> None:
    """Poll `probe` until it is true; past `timeout_s`, raise `error` naming `what` and the
    log that tells why (the caller's own error type, which its CLI prints as one line)."""
    deadline = time.monotonic() + timeout_s
    while not probe():
        if time.monotonic() > deadline:
            where = f"; see {log_file}" if log_file else ""
            raise error(f"timed out after {timeout_s:.0f} s waiting for {what}{where}")
        time.sleep(0.2)
