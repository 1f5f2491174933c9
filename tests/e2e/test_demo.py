"""The end-to-end flow of `make demo`, on the real test cluster.

`test_demo_flow` runs the demo's own steps in-process (cluster, chart, operator as the
chart's ServiceAccount, `kubectl apply`, Ready, the server started from the pod template, the
HTTP call) and, while everything is up, also runs the chart's `helm test` hook command and
the official OpenAI client against the server. `test_demo_command_*` run the demo as users
do, as a process, and check what it prints, the image, and that it leaves nothing behind,
also when interrupted with Ctrl-C half-way.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import openai
import pytest
import yaml
from PIL import Image
from support.cluster import Cluster

from e2e import demo

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

DEMO = Path(demo.__file__)
STUB_RGB = (0, 100, 200)  # the stub model's solid colour


def leftovers(cluster: Cluster) -> list[str]:
    """What a finished demo must not leave: its release, its namespace's models, its node."""
    found = []
    releases = cluster.helm("list", "-A", "-q").stdout.split()
    if demo.RELEASE in releases:
        found.append(f"helm release {demo.RELEASE}")
    namespace = cluster.kubectl(
        "get", "namespace", demo.DEMO_NAMESPACE, "-o", "jsonpath={.status.phase}", check=False
    )
    if namespace.returncode == 0 and namespace.stdout != "Terminating":
        found.append(f"namespace {demo.DEMO_NAMESPACE} ({namespace.stdout})")
    return found


def port_is_closed(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def hook_command(kube: demo.Kube, url: str, scratch: Path) -> list[str]:
    """The chart's `helm test` Pod, as a local command aimed at the local server."""
    hooks = kube.helm("get", "hooks", demo.RELEASE, "-n", demo.RELEASE_NAMESPACE)
    [pod] = [doc for doc in yaml.safe_load_all(hooks) if doc and doc["kind"] == "Pod"]
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    container = pod["spec"]["containers"][0]
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {
        m["mountPath"]: demo.local_volume(volumes[m["name"]], scratch)
        for m in container["volumeMounts"]
    }
    service = f"http://stub.{demo.DEMO_NAMESPACE}.svc:8080"
    assert service in container["args"], container["args"]
    args = [url if arg == service else demo.remap(arg, mounts) for arg in container["args"]]
    return [demo.venv_script(container["command"][0]), *args]


def test_demo_flow(cluster: Cluster, tmp_path: Path) -> None:
    options = demo.Options(out_dir=tmp_path / "out", size=64)
    with demo.session(options) as result:
        # Step 5 printed this table; it still says Ready.
        table = result.kube.kubectl("get", "ttimodels", "-n", demo.DEMO_NAMESPACE)
        assert "stub" in table and "Ready" in table and "1/1" in table, table

        # Step 7's image: the stub's solid colour, at the size asked for.
        with Image.open(result.image) as image:
            assert image.format == "PNG" and image.size == (64, 64)
            assert image.convert("RGB").getpixel((10, 10)) == STUB_RGB

        # The chart's `helm test` hook, its command run here against the local server.
        command = hook_command(result.kube, result.url, tmp_path / "hook")
        hook = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
        assert hook.returncode == 0, hook.stderr
        written = next((tmp_path / "hook").rglob("helm-test.png"))
        with Image.open(written) as image:
            assert image.size == (64, 64)

        # The OpenAI client of the docs, unchanged.
        client = openai.OpenAI(base_url=f"{result.url}/v1", api_key="unused")
        answer = client.images.generate(model="stub", prompt="a fox", size="64x64")
        assert answer.data and answer.data[0].b64_json

        server_url = result.url
    assert port_is_closed(server_url), "the model server outlived the demo"
    assert leftovers(cluster) == []


def test_demo_flow_sdxl_turbo_on_the_tiny_offline_model(cluster: Cluster, tmp_path: Path) -> None:
    """`--model sdxl-turbo`: the real SDXL code path (diffusers), weights from a host path."""
    options = demo.Options(model="sdxl-turbo", out_dir=tmp_path / "out", size=64)
    with demo.session(options) as result:
        deployment = result.kube.get_json("deployment", result.model, "-n", demo.DEMO_NAMESPACE)
        pod = deployment["spec"]["template"]["spec"]
        assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
        weights = next(v for v in pod["volumes"] if v["name"] == "weights")
        assert weights["hostPath"]["path"] == str((tmp_path / "out" / "tiny-sdxl").resolve())
        with Image.open(result.image) as image:
            assert image.format == "PNG" and image.size == (64, 64)
            # Random weights draw noise, not a solid colour like the stub.
            assert len(image.convert("RGB").getcolors(maxcolors=64 * 64) or []) > 1
    assert leftovers(cluster) == []


def run_demo(out: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(DEMO), "--out", str(out), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def read_until(process: subprocess.Popen[str], marker: str) -> str:
    """The demo's output up to the first line containing `marker`."""
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if marker in line:
            return "".join(seen)
    process.wait(timeout=60)
    raise AssertionError(f"the demo ended before {marker!r}:\n{''.join(seen)}")


def processes_started_for(folder: Path) -> list[int]:
    """Live processes whose environment names `folder` (the operator's KUBECONFIG is there,
    the server's volumes are): they must all be gone when the demo is."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            if str(folder).encode() in (proc / "environ").read_bytes():
                status = (proc / "status").read_text()
                if "State:\tZ" not in status:
                    found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_demo_command_runs_every_step_then_tears_down_on_ctrl_c(
    cluster: Cluster, tmp_path: Path
) -> None:
    """As a user runs it, with --keep-running: everything is up until Ctrl-C, then gone."""
    out = tmp_path.resolve()
    process = run_demo(out, "--size", "64", "--keep-running")
    output = read_until(process, "Press Ctrl-C")
    for number in range(1, demo.STEPS + 1):
        assert f"[{number}/{demo.STEPS}]" in output, output
    assert "Ready" in output and "ENDPOINT" in output.upper()  # the `kubectl get` table
    image = out / "stub.png"
    assert f"Image saved: {image}" in output
    with Image.open(image) as png:
        assert png.convert("RGB").getpixel((0, 0)) == STUB_RGB
    url = output.split("server ready at ")[1].split()[0]
    assert not port_is_closed(url)
    assert processes_started_for(out), "the operator and server should be running now"

    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output + rest
    assert "stopped the model server" in rest and "stopped the operator" in rest
    assert rest.rstrip().endswith("nothing the demo started is left running."), rest
    assert port_is_closed(url)
    assert processes_started_for(out) == []
    assert leftovers(cluster) == []


def test_demo_command_interrupted_half_way_leaves_nothing(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path.resolve()
    process = run_demo(out)
    read_until(process, f"[3/{demo.STEPS}]")
    process.send_signal(signal.SIGINT)
    rest, _ = process.communicate(timeout=300)
    assert process.returncode == 130, rest
    assert "interrupted; everything it started has been stopped" in rest
    assert processes_started_for(out) == []
    assert leftovers(cluster) == []
