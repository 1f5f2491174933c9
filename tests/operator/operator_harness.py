"""Helpers for the operator's cluster tests: the operator as a process, a CPU node, waiting.

The operator runs exactly as users run it (`python -m tti_operator.cli`, the `tti-operator`
entry point) against the test cluster's API server, in its own process that tests may kill
and restart. Its log goes to a file whose tail is shown when a wait gives up.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from support.cluster import Cluster

from localcluster import launcher

REPO = Path(__file__).resolve().parents[2]
CRD = REPO / "crds" / "tti.dev_texttoimagemodels.yaml"
SERVER_IMAGE = "tti-server:test"
CPU_NODE = "kwok-cpu-operator-tests"

T = TypeVar("T")


class OperatorProcess:
    """The operator as a child process; `kill()` is SIGKILL, as a crash or an OOM kill."""

    def __init__(
        self, cluster: Cluster, log_path: Path, extra_env: dict[str, str] | None = None
    ) -> None:
        self.cluster = cluster
        self.log_path = log_path
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {
            **os.environ,
            **self.cluster.env(),
            "TTI_OPERATOR_SERVER_IMAGE": SERVER_IMAGE,
            "TTI_OPERATOR_LIVENESS_PORT": "0",
            "TTI_OPERATOR_LOG_FORMAT": "plain",
            **self.extra_env,
        }
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tti_operator.cli"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc = None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])


def cpu_node() -> dict[str, Any]:
    """A kwok node without the GPU taint, where the simulated namespaces' CPU-only models
    (the stub) are scheduled."""
    return launcher.kwok_cpu_node(CPU_NODE)


def wait_for(
    probe: Callable[[], T],
    done: Callable[[T], bool],
    what: str,
    timeout_s: float = 90.0,
    operator: OperatorProcess | None = None,
) -> T:
    """Poll `probe` until `done`; on giving up, say what was last seen (and the operator log)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if done(value):
            return value
        if time.monotonic() > deadline:
            log = f"\n--- operator log ---\n{operator.log_tail()}" if operator else ""
            raise AssertionError(f"gave up waiting for {what}; last seen: {value!r}{log}")
        time.sleep(0.25)
