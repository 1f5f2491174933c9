"""The end-to-end demo behind `make demo`: chart, operator, model, image, on a local cluster.

    python tests/e2e/demo.py                      # the stub model
    python tests/e2e/demo.py --model sdxl-turbo   # SDXL-Turbo's code path on a tiny offline model

1. builds the cluster binaries if missing and starts the local cluster (a real API server,
   etcd, controller manager and scheduler; kwok's simulated nodes);
2. installs the Helm chart (namespaced: the operator may act in the demo namespace only);
3. runs the operator as a local process, authenticated as the chart's ServiceAccount;
4. `kubectl apply`s a TextToImageModel;
5. waits until `kubectl get ttimodels` shows it Ready, and prints that table;
6. starts the model server exactly as the Deployment's pod template says (command, args,
   env, port; volumes mapped to local folders);
7. makes the HTTP call the docs show and saves the image.

The simulated nodes run no containers: kwok marks the pods Running and Ready, but nothing
executes in them. That is why steps 3 and 6 run the operator and the server here, from the
same settings the cluster holds. Everything the demo started is stopped on exit, on Ctrl-C
and on SIGTERM; a cluster that was already up (`make cluster-up`) is left running.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:  # run as a script: make `cluster.launcher` importable
    sys.path.insert(0, str(TESTS_DIR))

from cluster import launcher  # noqa: E402
from support.cluster import shared_use  # noqa: E402
from support.server import free_port, stop_process  # noqa: E402

ROOT = TESTS_DIR.parent
CHART = ROOT / "charts" / "tti-operator"
SERVER_DOCKERFILE = ROOT / "Dockerfile.server"
RELEASE = "tti"
RELEASE_NAMESPACE = "tti-system"
DEMO_NAMESPACE = "tti-demo"
CPU_NODE = "kwok-cpu-0"
STEPS = 7
READY_TIMEOUT_S = 180.0
SERVER_TIMEOUT_S = 180.0

Obj = dict[str, Any]
ModelChoice = Literal["stub", "sdxl-turbo"]


class DemoError(Exception):
    """A failure the user can act on; printed as one line."""


@dataclass(frozen=True)
class Options:
    model: ModelChoice = "stub"
    prompt: str = "a lighthouse at dusk, watercolor"
    out_dir: Path = ROOT / "out" / "demo"
    size: int = 256
    keep_running: bool = False


# --- output -------------------------------------------------------------------------------


def step(number: int, what: str) -> None:
    print(f"\n[{number}/{STEPS}] {what}", flush=True)


def say(message: str) -> None:
    print(f"      {message}", flush=True)


def indented(text: str) -> None:
    for line in text.rstrip().splitlines():
        say(line)


# --- processes ----------------------------------------------------------------------------


def stop(process: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM, then SIGKILL: the process must be gone when this returns."""
    stop_process(process, timeout=15)
    say(f"stopped {name} (pid {process.pid})")


def wait_until(
    what: str, probe: Callable[[], bool], timeout_s: float, process: subprocess.Popen[bytes]
) -> None:
    """Poll `probe` while showing progress; fail early if `process` dies."""
    start = time.monotonic()
    last_report = start
    while not probe():
        now = time.monotonic()
        if process.poll() is not None:
            raise DemoError(f"{what}: the process exited with status {process.returncode}")
        if now - start > timeout_s:
            raise DemoError(f"{what}: not ready after {timeout_s:.0f} s")
        if now - last_report >= 5:
            say(f"... still waiting for {what} ({now - start:.0f} s)")
            last_report = now
        time.sleep(0.25)


def http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def venv_script(name: str) -> str:
    """A console script of this environment (tti-operator, tti-server)."""
    beside = Path(sys.executable).parent / name
    if not beside.exists():
        raise DemoError(f"{name} is not installed next to {sys.executable}: run `make venv`")
    return str(beside)


# --- cluster ------------------------------------------------------------------------------


@dataclass
class Kube:
    paths: launcher.ClusterPaths

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        try:
            return launcher.kubectl(self.paths, *args, input=input, check=check).stdout
        except launcher.ClusterError as error:
            raise DemoError(str(error)) from None

    def helm(self, *args: str) -> str:
        command: list[str | Path] = [self.paths.helm, "--kubeconfig", self.paths.kubeconfig]
        command += args
        try:
            return launcher.run(self.paths, command, timeout=300).stdout
        except launcher.ClusterError as error:
            raise DemoError(str(error)) from None

    def get_json(self, *args: str) -> Obj:
        data: Obj = json.loads(self.kubectl("get", *args, "-o", "json"))
        return data


def cpu_node(name: str = CPU_NODE) -> Obj:
    """An untainted kwok node: where pods that ask for no GPU (the stub, the operator) go."""
    resources = {"cpu": "16", "memory": "64Gi", "pods": "110", "ephemeral-storage": "100Gi"}
    return launcher.kwok_node(name, resources)


def delete_quietly(kube: Kube, kind: str, name: str) -> None:
    """Teardown: ask for the deletion and move on (namespaces finish terminating by themselves)."""
    kube.kubectl("delete", kind, name, "--wait=false", "--ignore-not-found", check=False)
    say(f"deleted {kind} {name}")


def uninstall(kube: Kube) -> None:
    kube.helm("uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait", "--ignore-not-found")
    say(f"uninstalled helm release {RELEASE}")


def namespace_phase(kube: Kube, name: str) -> str:
    """Active, Terminating, or "" when there is no such namespace."""
    phase = kube.kubectl(
        "get", "namespace", name, "--ignore-not-found", "-o", "jsonpath={.status.phase}"
    )
    return phase.strip()


def ensure_namespace(kube: Kube, name: str, timeout_s: float = 120.0) -> bool:
    """Create `name` unless it exists; returns True when this call created it.

    A namespace left Terminating by an earlier run refuses new objects: wait it out.
    """
    start = time.monotonic()
    while (phase := namespace_phase(kube, name)) == "Terminating":
        if time.monotonic() - start > timeout_s:
            raise DemoError(f"namespace {name} is still terminating after {timeout_s:.0f} s")
        say(f"namespace {name} from an earlier run is still terminating; waiting")
        time.sleep(2)
    if phase:
        return False
    kube.kubectl("create", "namespace", name)
    return True


def has_untainted_node(kube: Kube) -> bool:
    nodes = kube.get_json("nodes")["items"]
    return any(not node["spec"].get("taints") for node in nodes)


def service_account_kubeconfig(kube: Kube, namespace: str, account: str, dest: Path) -> Path:
    """A kubeconfig that authenticates as a ServiceAccount, with a short-lived token."""
    token = kube.kubectl("create", "token", account, "-n", namespace, "--duration=2h").strip()
    # --flatten embeds the CA: the new file must not depend on paths next to the admin's.
    admin = json.loads(
        kube.kubectl("config", "view", "--raw", "--minify", "--flatten", "-o", "json")
    )
    cluster = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "demo", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [
            {
                "name": account,
                "context": {"cluster": "demo", "user": account, "namespace": namespace},
            }
        ],
        "current-context": account,
    }
    dest.write_text(json.dumps(config, indent=2))
    dest.chmod(0o600)
    return dest


# --- the pod template, run locally --------------------------------------------------------


def image_entrypoint(dockerfile: Path = SERVER_DOCKERFILE) -> list[str]:
    """The server image's ENTRYPOINT: a container without `command` runs this."""
    for line in reversed(dockerfile.read_text().splitlines()):
        if line.startswith("ENTRYPOINT"):
            entrypoint: list[str] = json.loads(line.removeprefix("ENTRYPOINT").strip())
            return entrypoint
    raise DemoError(f"{dockerfile.name} has no ENTRYPOINT")


@dataclass(frozen=True)
class LocalPod:
    """A container of a pod template, translated to a local process."""

    argv: list[str]
    env: dict[str, str]
    port: int
    volumes: dict[str, Path]  # mountPath -> local folder
    notes: list[str] = field(default_factory=list)


def local_volume(volume: Obj, scratch: Path) -> Path:
    """Where a pod volume lives on this machine."""
    name: str = volume["name"]
    if "emptyDir" in volume:
        folder = scratch / name
        folder.mkdir(parents=True, exist_ok=True)
        return folder
    if "hostPath" in volume:
        return Path(volume["hostPath"]["path"])
    kinds = sorted(set(volume) - {"name"})
    raise DemoError(f"volume {name!r} ({', '.join(kinds)}) cannot be mapped to a local folder")


def remap(value: str, volumes: dict[str, Path]) -> str:
    """Rewrite a container path under a mount into the local folder (longest mount first)."""
    for mount in sorted(volumes, key=len, reverse=True):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(volumes[mount]) + value[len(mount) :]
    return value


def replace_flag(args: list[str], flag: str, value: str) -> list[str]:
    if flag not in args:
        return [*args, flag, value]
    index = args.index(flag)
    return [*args[: index + 1], value, *args[index + 2 :]]


def local_pod(template: Obj, scratch: Path, port: int, grpc_port: int = 0) -> LocalPod:
    """The first container of `template` as a local command (pure, apart from mkdir).

    Its gRPC API listens on `grpc_port` (0: off), never the pod's fixed 8085, which
    another local server may hold.
    """
    spec = template["spec"]
    container = spec["containers"][0]
    volumes_by_name = {v["name"]: v for v in spec.get("volumes", [])}
    volumes = {
        m["mountPath"]: local_volume(volumes_by_name[m["name"]], scratch)
        for m in container.get("volumeMounts", [])
    }
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "value" not in item:
            raise DemoError(f"env {item['name']} uses valueFrom, which has no local equivalent")
        env[item["name"]] = remap(item["value"], volumes)
    command = container.get("command") or image_entrypoint()
    args = [remap(arg, volumes) for arg in container.get("args", [])]
    container_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "http")
    args = replace_flag(args, "--port", str(port))
    args = replace_flag(args, "--grpc-port", str(grpc_port))
    args = replace_flag(args, "--host", "127.0.0.1")
    notes = [
        f"container port {container_port} -> 127.0.0.1:{port} (a free local port, loopback only)",
        *(f"volume {mount} -> {folder}" for mount, folder in sorted(volumes.items())),
    ]
    if container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu"):
        notes.append("nvidia.com/gpu limit: no GPU here, the server falls back to the CPU")
    argv = [venv_script(command[0]), *command[1:], *args]
    return LocalPod(argv=argv, env=env, port=port, volumes=volumes, notes=notes)


# --- the demo -----------------------------------------------------------------------------


def model_name(options: Options) -> str:
    return "stub" if options.model == "stub" else "sdxl-turbo-tiny"


def model_manifest(options: Options, weights: Path | None) -> Obj:
    spec: Obj = {"model": options.model, "imageFormat": "png", "replicas": 1}
    if options.model == "stub":
        spec["gpus"] = 0
    else:
        assert weights is not None
        # On a real cluster this would be a folder on the GPU node (or a PVC); here the
        # "node" is this machine, so the host path is the local folder itself.
        spec["gpus"] = 1
        spec["source"] = {"hostPath": {"path": str(weights)}}
    return {
        "apiVersion": "tti.dev/v1alpha1",
        "kind": "TextToImageModel",
        "metadata": {"name": model_name(options), "namespace": DEMO_NAMESPACE},
        "spec": spec,
    }


@contextlib.contextmanager
def sharing(paths: launcher.ClusterPaths) -> Iterator[None]:
    """`shared_use`, told nothing about an exception on the way out.

    Its last-user check returns from a `finally`, which would swallow a Ctrl-C in flight;
    exiting it as if all went well lets the exception go on up to `main`.
    """
    use = shared_use(paths)
    use.__enter__()
    try:
        yield
    finally:
        use.__exit__(None, None, None)


def start_cluster(stack: contextlib.ExitStack) -> Kube:
    step(1, "Building what is missing and starting the local cluster")
    say("binaries: Kubernetes, etcd, kwok and helm, built from Go modules (cached after once)")
    subprocess.run(["bash", str(launcher.BUILD_SCRIPT)], check=True)
    paths = launcher.default_paths()
    # Shared with test sessions in this checkout: the last user out stops a cluster that
    # one of them started; one from `make cluster-up` is never stopped.
    stack.enter_context(sharing(paths))
    try:
        started = launcher.up(paths, ephemeral=True)
    except launcher.ClusterError as error:
        raise DemoError(f"cluster: {error}") from None
    if not started:
        say("a cluster was already up: using it, and leaving it to whoever started it")
    kube = Kube(paths)
    if not has_untainted_node(kube):
        # The launcher's nodes are GPU nodes (tainted); CPU pods need a node of their own.
        kube.kubectl("apply", "-f", "-", input=json.dumps(cpu_node()))
        stack.callback(delete_quietly, kube, "node", CPU_NODE)
        say(f"added {CPU_NODE}, a CPU node without the GPU taint, for pods that need no GPU")
    indented(kube.kubectl("get", "nodes"))
    say("the nodes are kwok's: the scheduler places pods on them, no container runs")
    return kube


def install_chart(kube: Kube, stack: contextlib.ExitStack, model: str) -> None:
    step(2, f"Installing the Helm chart as release {RELEASE!r} in {RELEASE_NAMESPACE!r}")
    for namespace in (RELEASE_NAMESPACE, DEMO_NAMESPACE):
        if ensure_namespace(kube, namespace):
            stack.callback(delete_quietly, kube, "namespace", namespace)
    stack.callback(uninstall, kube)
    say(f"helm upgrade --install {RELEASE} charts/tti-operator --set watchNamespaces={{...}}")
    kube.helm(
        "upgrade",
        "--install",
        RELEASE,
        str(CHART),
        "-n",
        RELEASE_NAMESPACE,
        "--set",
        f"watchNamespaces={{{DEMO_NAMESPACE}}}",
        # `helm test` (the chart's hook) calls the model this demo applies.
        "--set",
        f"tests.model={model},tests.namespace={DEMO_NAMESPACE}",
    )
    objects = kube.kubectl(
        "get",
        "serviceaccount,deployment,role,rolebinding",
        "-A",
        "-l",
        f"app.kubernetes.io/instance={RELEASE}",
        "--no-headers",
        "-o",
        "custom-columns=KIND:.kind,NAMESPACE:.metadata.namespace,NAME:.metadata.name",
    )
    indented(objects)
    say(f"namespaced install: a Role in {DEMO_NAMESPACE!r} only, no ClusterRole")


def run_operator(kube: Kube, stack: contextlib.ExitStack, out_dir: Path) -> None:
    step(3, "Running the operator, authenticated as the chart's ServiceAccount")
    deployment = kube.get_json(
        "deployment", "-n", RELEASE_NAMESPACE, "-l", "app.kubernetes.io/component=operator"
    )
    [item] = deployment["items"]
    pod_spec = item["spec"]["template"]["spec"]
    account = pod_spec["serviceAccountName"]
    kubeconfig = service_account_kubeconfig(
        kube, RELEASE_NAMESPACE, account, out_dir / "operator.kubeconfig"
    )
    say(f"token: kubectl create token {account} -n {RELEASE_NAMESPACE} -> {kubeconfig.name}")
    container = pod_spec["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    liveness = free_port()
    env["TTI_OPERATOR_LIVENESS_PORT"] = str(liveness)
    env["TTI_OPERATOR_LOG_FORMAT"] = "plain"
    say("settings from the Deployment: " + ", ".join(f"{k}={v}" for k, v in sorted(env.items())))
    say(f"(liveness moved to free port {liveness}, plain logs for reading)")
    log_path = out_dir / "operator.log"
    log = stack.enter_context(log_path.open("wb"))
    process = subprocess.Popen(
        [venv_script("tti-operator")],
        env={**os.environ, **env, "KUBECONFIG": str(kubeconfig)},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stack.callback(stop, process, "the operator")
    wait_until("the operator", lambda: http_ok(f"http://127.0.0.1:{liveness}/healthz"), 60, process)
    say(f"operator running (pid {process.pid}), log: {log_path}")


def apply_model(kube: Kube, options: Options, out_dir: Path) -> str:
    step(4, f"Applying a TextToImageModel ({options.model})")
    weights = None
    if options.model == "sdxl-turbo":
        weights = out_dir / "tiny-sdxl"
        say(f"writing the tiny offline SDXL pipeline to {weights} (random weights: noise)")
        subprocess.run([venv_script("tti-server"), "make-tiny-model", str(weights)], check=True)
    manifest = model_manifest(options, weights)
    path = out_dir / f"{manifest['metadata']['name']}.yaml"
    path.write_text(json.dumps(manifest, indent=2))
    indented(json.dumps(manifest["spec"]))
    indented(kube.kubectl("apply", "-f", str(path)))
    name: str = manifest["metadata"]["name"]
    return name


def wait_ready(kube: Kube, name: str) -> None:
    step(5, f"Waiting until ttimodel/{name} is Ready")
    start = time.monotonic()
    seen = ""
    while True:
        status = kube.get_json("ttimodel", name, "-n", DEMO_NAMESPACE).get("status", {})
        now = f"{status.get('phase', 'Pending')} {status.get('ready', '')}".strip()
        if now != seen:
            say(f"{time.monotonic() - start:5.1f} s  {now}")
            seen = now
        ready = [c for c in status.get("conditions", []) if c.get("type") == "Ready"]
        if ready and ready[0].get("status") == "True":
            break
        if time.monotonic() - start > READY_TIMEOUT_S:
            raise DemoError(
                f"ttimodel/{name} not Ready after {READY_TIMEOUT_S:.0f} s ({now}); "
                "see the operator's log in the output folder"
            )
        time.sleep(0.5)
    print(flush=True)
    indented(kube.kubectl("get", "ttimodels", "-n", DEMO_NAMESPACE))


def start_server(kube: Kube, name: str, stack: contextlib.ExitStack, out_dir: Path) -> str:
    step(6, "Starting the model server exactly as the Deployment's pod template says")
    deployment = kube.get_json("deployment", name, "-n", DEMO_NAMESPACE)
    pod = local_pod(deployment["spec"]["template"], out_dir / "volumes", free_port())
    say("kwok's pods run no container, so the container runs here:")
    say("$ " + " ".join(f"{k}={shlex.quote(v)}" for k, v in pod.env.items()))
    say("  " + shlex.join(pod.argv))
    for note in pod.notes:
        say(note)
    log_path = out_dir / "server.log"
    log = stack.enter_context(log_path.open("wb"))
    process = subprocess.Popen(
        pod.argv,
        env={"PATH": os.environ.get("PATH", ""), **pod.env},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stack.callback(stop, process, "the model server")
    url = f"http://127.0.0.1:{pod.port}"
    wait_until("the model server", lambda: http_ok(url + "/readyz"), SERVER_TIMEOUT_S, process)
    say(f"server ready at {url} (pid {process.pid}), log: {log_path}")
    return url


def generate(url: str, model: str, options: Options, out_dir: Path) -> Path:
    step(7, "Calling the model over HTTP, as the docs show")
    body = {
        "model_id": model,
        "inputs": options.prompt,
        "parameters": {"height": options.size, "width": options.size, "num_steps": 1},
    }
    say(f"curl -sS {url}/api/v1/task/text-to-image -H 'Content-Type: application/json' \\")
    say(f"     -d '{json.dumps(body)}'")
    request = urllib.request.Request(
        f"{url}/api/v1/task/text-to-image",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=300) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise DemoError(
            f"the server answered {error.code}: {error.read().decode()[:300]}"
        ) from None
    image = base64.b64decode(answer["output"]["image_data"])
    path = out_dir / f"{model}.png"
    path.write_bytes(image)
    say(f"caption: {answer['caption']!r}, producer: {answer['producer_id']}")
    return path


@dataclass(frozen=True)
class Result:
    """What a finished demo run leaves up until its session ends."""

    kube: Kube
    model: str  # the TextToImageModel's name
    url: str  # the local model server
    image: Path


@contextlib.contextmanager
def session(options: Options) -> Iterator[Result]:
    """Steps 1-7; yields with everything still running, tears it all down on exit."""
    out_dir = options.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            kube = start_cluster(stack)
            install_chart(kube, stack, model_name(options))
            run_operator(kube, stack, out_dir)
            name = apply_model(kube, options, out_dir)
            wait_ready(kube, name)
            url = start_server(kube, name, stack, out_dir)
            image = generate(url, name, options, out_dir)  # served as its name
            print(f"\nImage saved: {image}", flush=True)
            yield Result(kube=kube, model=name, url=url, image=image)
        finally:
            print("\nTearing down what the demo started", flush=True)
    print("Done: nothing the demo started is left running.", flush=True)


def run(options: Options) -> Path:
    """The whole demo; returns the image's path."""
    with session(options) as result:
        if options.keep_running:
            wait_for_ctrl_c(result)
        return result.image


def wait_for_ctrl_c(result: Result) -> None:
    kubeconfig = result.kube.paths.kubeconfig
    # Inside the try: a Ctrl-C that lands right after the prompt is printed is the
    # expected one, not an interruption of the demo.
    try:
        print(
            f"\nEverything is still up. Try:\n"
            f"  KUBECONFIG={kubeconfig} kubectl get ttimodels -A\n"
            f"  curl -s {result.url}/v1/models\n"
            "Press Ctrl-C to tear it all down.",
            flush=True,
        )
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("Ctrl-C: stopping", flush=True)


def parse_args(argv: Sequence[str] | None) -> Options:
    parser = argparse.ArgumentParser(
        prog="demo",
        description="Local end-to-end demo: cluster, Helm chart, operator, a TextToImageModel, "
        "and one generated image. Everything it starts is stopped at the end.",
    )
    parser.add_argument(
        "--model",
        choices=["stub", "sdxl-turbo"],
        default="stub",
        help="stub (default), or sdxl-turbo on a tiny offline pipeline (random weights)",
    )
    parser.add_argument("--prompt", default=Options.prompt, help="what to draw")
    parser.add_argument(
        "--out", type=Path, default=Options.out_dir, help="folder for the image and logs"
    )
    parser.add_argument("--size", type=int, default=None, help="image side in pixels")
    parser.add_argument(
        "--keep-running",
        action="store_true",
        help="after the image, keep everything up until Ctrl-C (to try kubectl and curl)",
    )
    args = parser.parse_args(argv)
    size = args.size if args.size is not None else (256 if args.model == "stub" else 128)
    if not 8 <= size <= 2048:
        parser.error(f"--size must be between 8 and 2048, got {size}")
    return Options(
        model=args.model,
        prompt=args.prompt,
        out_dir=args.out,
        size=size,
        keep_running=args.keep_running,
    )


def main(argv: Sequence[str] | None = None) -> int:
    options = parse_args(argv)
    signal.signal(signal.SIGTERM, launcher.raise_keyboard_interrupt)
    try:
        run(options)
    except DemoError as error:
        print(f"demo: error: {error}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as error:
        print(f"demo: error: {shlex.join(map(str, error.cmd))} failed", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("demo: interrupted; everything it started has been stopped", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
