"""The end-to-end flow of `make demo`, on the real test cluster and its real node.

`test_demo_flow` runs the demo's own steps in-process (cluster, chart with its operator pod,
`kubectl apply`, Ready from the model pod's probes, a client pod calling the Service, `helm
test`) and, while everything is up, also calls the model through its Service from this machine
with the official OpenAI client. `test_demo_command_*` run the demo as users do, as a process,
and check what it prints, the image, and that it leaves nothing behind, also when interrupted
with Ctrl-C half-way.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from PIL import Image
from support.cluster import Cluster

from localcluster import demo
from tti_server.backends.stub import STUB_COLOR

pytestmark = [pytest.mark.e2e, pytest.mark.cluster, pytest.mark.slow]

ROOT = Path(demo.__file__).parents[1]


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


def service_url(kube: demo.Kube, name: str) -> str:
    """The model's Service by its cluster IP: kube-proxy routes it from this machine too."""
    ip = kube.kubectl(
        "get", "service", name, "-n", demo.DEMO_NAMESPACE, "-o", "jsonpath={.spec.clusterIP}"
    )
    return f"http://{ip}:8080"


def demo_pods(cluster: Cluster) -> list[str]:
    listed = cluster.kubectl("get", "pods", "-n", demo.DEMO_NAMESPACE, "-o", "name", check=False)
    return listed.stdout.split() if listed.returncode == 0 else []


def test_demo_flow(cluster: Cluster, tmp_path: Path) -> None:
    options = demo.Options(out_dir=tmp_path / "out", size=64)
    with demo.session(options) as result:
        # Step 4 printed this table; it still says Ready.
        table = result.kube.kubectl("get", "ttimodels", "-n", demo.DEMO_NAMESPACE)
        assert "stub" in table and "Ready" in table and "1/1" in table, table
        [operator] = result.kube.get_json(
            "pods", "-n", demo.RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=operator"
        )["items"]
        assert operator["status"]["phase"] == "Running"
        assert operator["spec"]["nodeName"] == demo.node_config.NODE_NAME

        # Step 5's image, from the client pod: the stub's solid colour at the size asked for.
        with Image.open(result.image) as image:
            assert image.format == "PNG" and image.size == (64, 64)
            assert image.convert("RGB").getpixel((10, 10)) == STUB_COLOR

        # The OpenAI client of the docs, unchanged, through the model's Service.
        url = service_url(result.kube, result.model)
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        answer = client.images.generate(model="stub", prompt="a fox", size="64x64")
        assert answer.data and answer.data[0].b64_json

        # And through the gateway: one base_url for every model it lists.
        gateway, port = demo.gateway_service(result.kube)
        where = ("-n", demo.RELEASE_NAMESPACE, "-o", "jsonpath={.spec.clusterIP}")
        ip = result.kube.kubectl("get", "service", gateway, *where)
        client = openai.OpenAI(base_url=f"http://{ip}:{port}/v1", api_key="unused")
        assert "stub" in [model.id for model in client.models.list()]
        answer = client.images.generate(model="stub", prompt="a fox", size="64x64")
        assert answer.data and answer.data[0].b64_json
    assert leftovers(cluster) == []


def test_demo_flow_sdxl_turbo_on_the_tiny_offline_model(cluster: Cluster, tmp_path: Path) -> None:
    """`--model sdxl-turbo`: the SDXL code path (diffusers) in a pod, weights on a host path."""
    options = demo.Options(model="sdxl-turbo", out_dir=tmp_path / "out", size=64)
    with demo.session(options) as result:
        deployment = result.kube.get_json("deployment", result.model, "-n", demo.DEMO_NAMESPACE)
        pod = deployment["spec"]["template"]["spec"]
        weights = next(v for v in pod["volumes"] if v["name"] == "weights")
        assert weights["hostPath"]["path"] == str((tmp_path / "out" / "tiny-sdxl").resolve())
        with Image.open(result.image) as image:
            assert image.format == "PNG" and image.size == (64, 64)
            # Random weights draw noise, not a solid colour like the stub.
            assert len(image.convert("RGB").getcolors(maxcolors=64 * 64) or []) > 1
    assert leftovers(cluster) == []


@contextlib.contextmanager
def run_demo(out: Path, *args: str) -> Iterator[subprocess.Popen[str]]:
    """The demo as a process; a test that fails half-way still stops it (Ctrl-C, so it tears
    down what it started; killed if that takes too long), or it would hold the cluster."""
    process = subprocess.Popen(
        [sys.executable, "-m", "localcluster.demo", "--out", str(out), *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=180)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
        assert process.stdout is not None
        process.stdout.close()  # a demo that ended by itself leaves its pipe open


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


# The demo runs as a process: chart (operator and gateway pods), a model pod, a client pod,
# helm test, then its teardown; on a loaded two-core machine that can pass 300 s.
@pytest.mark.timeout(900)
def test_demo_command_runs_every_step_then_tears_down_on_ctrl_c(
    cluster: Cluster, tmp_path: Path
) -> None:
    """As a user runs it, with --keep-running: everything is up until Ctrl-C, then gone."""
    out = tmp_path.resolve()
    with run_demo(out, "--size", "64", "--keep-running") as process:
        output = read_until(process, "Press Ctrl-C")
        for number in range(1, demo.STEPS + 1):
            assert f"[{number}/{demo.STEPS}]" in output, output
        assert "Ready" in output and "ENDPOINT" in output.upper()  # the `kubectl get` table
        assert "Phase:          Succeeded" in output  # helm test
        assert "Simulated: GPUs only" in output
        image = out / "stub.png"
        assert f"Image saved: {image}" in output
        with Image.open(image) as png:
            assert png.convert("RGB").getpixel((0, 0)) == STUB_COLOR
        assert demo_pods(cluster), "the model's pod should be running now"

        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=300)
        assert process.returncode == 0, output + rest
        assert "uninstalled helm release" in rest
        assert rest.rstrip().endswith("nothing the demo started is left running."), rest
    assert leftovers(cluster) == []


@pytest.mark.timeout(900)
def test_demo_command_interrupted_half_way_leaves_nothing(cluster: Cluster, tmp_path: Path) -> None:
    out = tmp_path.resolve()
    with run_demo(out) as process:
        read_until(process, f"[3/{demo.STEPS}]")
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=300)
        assert process.returncode == 130, rest
    assert "interrupted; everything it started has been stopped" in rest
    assert leftovers(cluster) == []
