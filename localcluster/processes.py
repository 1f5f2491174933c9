"""Finding and stopping the local processes the cluster and its node start."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path


def is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie has exited; it only waits for its parent to reap it.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    return True


def naming(marker: str) -> dict[str, int]:
    """Every live process whose command line contains `marker`, as `name[pid]` -> pid.

    This also finds what no pid file names: a component killed between fork and write, a
    containerd shim (its command line names its containerd's socket).
    """
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if any(marker.encode() in arg for arg in argv) and is_alive(int(proc.name)):
                found[f"{Path(argv[0].decode()).name}[{proc.name}]"] = int(proc.name)
    return found


def stop(pids: dict[str, int], grace_s: float = 10.0) -> dict[str, int]:
    """SIGTERM, then SIGKILL after a grace period; returns those still alive after both."""
    alive = {name: pid for name, pid in pids.items() if is_alive(pid)}
    for signum in (signal.SIGTERM, signal.SIGKILL):
        for pid in alive.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            alive = {name: pid for name, pid in alive.items() if is_alive(pid)}
            time.sleep(0.1)
        if not alive:
            break
    return alive


def described(pids: dict[str, int]) -> str:
    return ", ".join(f"{name} (pid {pid})" for name, pid in pids.items())
