"""Measure: a stub tti-server and a gateway in front of it (auth on) under hostile clients.

For each process: its peak resident memory (VmHWM) before and after one request with a huge
header (with a valid token, to the gateway), the answer to 2,000 headers, and what each slow
client of `support.hostile.SLOW_CLIENTS` got within `--patience` seconds (all at once, with
the processes' default timeouts). Runs against whichever code is on PYTHONPATH, so the same
script measures a tree from before the limits (it leaves out the flags that tree lacks).

    .venv/bin/python tests/benchmarks/hostile_clients.py [--header-mib 64] [--patience 45]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from support.gateway import gateway_command
from support.hostile import (
    SLOW_CLIENTS,
    Answer,
    many_headers_request,
    peak_rss_mib,
    send_huge_header,
    send_raw,
)
from support.server import ServerProcess, free_port, launch_server, stop_process, wait_until_ready

from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE as CAIKIT

TOKEN = "measure-token"


def start_gateway(server: ServerProcess, tokens: Path, log_dir: Path) -> ServerProcess:
    port = free_port()
    args = ["--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    args += ["--models", f"stub={server.url}", "--auth-tokens-file", str(tokens)]
    help_text = subprocess.run([*gateway_command(), "--help"], capture_output=True, text=True)
    if "--metrics-port" in help_text.stdout:
        args += ["--metrics-port", str(free_port())]
    env = {k: v for k, v in os.environ.items() if not k.startswith("TTI_")}
    log = (log_dir / "gateway.log").open("wb")
    process = subprocess.Popen([*gateway_command(), *args], stdout=log, stderr=log, env=env)
    gateway = ServerProcess(f"http://127.0.0.1:{port}", process, log_dir / "gateway.log")
    wait_until_ready(gateway, 30)
    return gateway


def describe(answer: Answer) -> str:
    if answer.status is not None:
        return f"{answer.status}" + ("" if answer.closed else ", left open")
    return "closed" if answer.closed else "still open"


def measure(name: str, target: ServerProcess, header_mib: int, patience: float) -> list[str]:
    auth = b"Authorization: Bearer " + TOKEN.encode() + b"\r\n"
    before = peak_rss_mib(target.process.pid)
    flood = send_huge_header(target.url, CAIKIT, header_mib << 20, head=auth)
    after = peak_rss_mib(target.process.pid)
    many = send_raw(target.url, many_headers_request(CAIKIT, 2000))
    slow: dict[str, Answer] = {}

    def run(case: str) -> None:
        slow[case] = SLOW_CLIENTS[case][0](target.url, patience, auth)

    threads = [threading.Thread(target=run, args=(case,)) for case in SLOW_CLIENTS]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = [
        f"{name}: peak RSS {before:.0f} MiB before, {after:.0f} MiB after a {header_mib} MiB "
        f"header (answer {describe(flood.answer)}, {flood.sent >> 20} MiB written)",
        f"{name}: 2,000 headers: {describe(many)}",
    ]
    lines += [f"{name}: {case}: {describe(slow[case])}" for case in SLOW_CLIENTS]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--header-mib", type=int, default=64, help="size of the huge header")
    parser.add_argument("--patience", type=float, default=45.0, help="seconds a slow client waits")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        log_dir = Path(tmp)
        tokens = log_dir / "tokens"
        tokens.write_text(TOKEN + "\n")
        server = launch_server(["--model", "stub", "--grpc-port", "0"], log_dir)
        gateway = None
        try:
            gateway = start_gateway(server, tokens, log_dir)
            lines = measure("gateway", gateway, args.header_mib, args.patience)
            lines += measure("tti-server", server, args.header_mib, args.patience)
        finally:
            if gateway is not None:
                stop_process(gateway.process)
            stop_process(server.process)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
