"""`make demo-server`: start the stub server, generate one image into a file, and print the
playground's address; from a terminal it then serves until Ctrl-C, otherwise it stops.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tti_server.tools.client import ClientError, GenerateOptions, generate

OUTPUT = Path("out/demo.png")
READY_TIMEOUT_S = 60.0
#: The port tti-server uses everywhere, when it is free here.
PREFERRED_PORT = 8080


def free_port() -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", PREFERRED_PORT))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_ready(url: str, server: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ClientError(f"the server exited with status {server.returncode}")
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise ClientError(f"the server was not ready within {READY_TIMEOUT_S:g} s")


def stop(server: subprocess.Popen[bytes]) -> None:
    if server.poll() is None:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def main() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "tti_server", "--model", "stub", "--host", "127.0.0.1"]
    print(f"==> starting tti-server with the stub model on {url}", flush=True)
    server = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "warning"],
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        wait_until_ready(url, server)
        print("==> ready; generating one 256x256 image", flush=True)
        prompt = "a watercolour lighthouse at dawn"
        image = generate(url, GenerateOptions(prompt=prompt, height=256, width=256))
        OUTPUT.parent.mkdir(parents=True, exist_ok=True)
        OUTPUT.write_bytes(image)
        print(f"==> wrote {OUTPUT.resolve()} ({len(image)} bytes)")
        print(f"==> the playground, to try the model in a browser: {url}/", flush=True)
        if sys.stdin.isatty():
            print("==> serving until Ctrl-C", flush=True)
            server.wait()
    except ClientError as exc:
        sys.exit(f"demo: error: {exc}")
    except KeyboardInterrupt:
        pass
    finally:
        stop(server)
    print("==> the server has stopped")


if __name__ == "__main__":
    main()
