"""The end-to-end demo behind `make demo`: chart, operator pod, model pod, image, on real pods.

    python3 -m localcluster.demo                      # the stub model
    python3 -m localcluster.demo --model sdxl-turbo   # SDXL-Turbo on a tiny offline model

1. builds what is missing (the cluster's binaries, the two images) and starts the local
   cluster: a real control plane, a real node running pods (containerd, kubelet, kube-proxy,
   CoreDNS) and kwok's simulated GPU nodes;
2. installs the Helm chart: the operator runs as the chart's Deployment, in a pod on the real
   node, with the chart's ServiceAccount (namespaced: it may act in the demo namespace only);
3. `kubectl apply`s a TextToImageModel;
4. waits until `kubectl get ttimodels` shows it Ready: the model's pod runs the server image
   and its readiness probe passed;
5. runs a client pod that calls http://NAME.NAMESPACE.svc:8080 (CoreDNS, the Service,
   kube-proxy) and brings the image back to this machine;
6. runs the chart's `helm test`.

Only GPUs are simulated: the model asks for none here and runs on the CPU. Everything the demo
created is deleted on exit, on Ctrl-C and on SIGTERM; a cluster that was already up
(`make cluster-up`) is left running.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localcluster import images, launcher, node_config
from tti_contracts.api import API_VERSION, KIND
from tti_contracts.catalogue import CATALOGUE, ModelName, entry

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "charts" / "tti-operator"
RELEASE = "tti"
RELEASE_NAMESPACE = "tti-system"
DEMO_NAMESPACE = "tti-demo"
CLIENT_POD = "tti-client"
STEPS = 6
READY_TIMEOUT_S = 300.0

Obj = dict[str, Any]


class DemoError(Exception):
    """A failure the user can act on; printed as one line."""


@dataclass(frozen=True)
class Options:
    model: ModelName = "stub"
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


# --- helpers ------------------------------------------------------------------------------


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
    kube.kubectl("create", "-f", "-", input=json.dumps(launcher.namespace(name, simulated=False)))
    return True


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


# --- the demo -----------------------------------------------------------------------------


def needs_weights(options: Options) -> bool:
    """A model of the catalogue that loads weights runs here on a tiny offline pipeline."""
    return entry(options.model).default_repo is not None


def model_name(options: Options) -> str:
    return f"{options.model}-tiny" if needs_weights(options) else options.model


def model_manifest(options: Options, weights: Path | None) -> Obj:
    # No GPU asked: the real node has none (only kwok's simulated nodes do), so the model
    # runs on the CPU, in a pod small enough for a laptop.
    spec: Obj = {"model": options.model, "imageFormat": "png", "replicas": 1, "gpus": 0}
    if weights is not None:
        # On a real cluster this would be a folder on the GPU node (or a PVC); here the node
        # is this machine, so the host path is the local folder itself.
        spec["source"] = {"hostPath": {"path": str(weights)}}
        spec["resources"] = {"requests": {"cpu": "500m", "memory": "1Gi"}}
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": model_name(options), "namespace": DEMO_NAMESPACE},
        "spec": spec,
    }


def client_pod(namespace: str, url: str, model: str, size: int, prompt: str) -> Obj:
    """A pod that calls the model through its Service and prints the image as base64.

    It runs the server image, whose `tti generate` is the project's own client; the image
    comes back through the pod's log, so nothing needs to be copied out of a finished pod.
    """
    generate = shlex.join(
        [
            "tti",
            "generate",
            prompt,
            "--url",
            url,
            "--model-id",
            model,
            "--height",
            str(size),
            "--width",
            str(size),
            "-o",
            "/tmp/image.png",
        ]
    )
    security = {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": CLIENT_POD, "namespace": namespace},
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "containers": [
                {
                    "name": "client",
                    "image": images.PROJECT_IMAGES[0].ref,
                    "imagePullPolicy": "IfNotPresent",
                    "command": ["sh", "-c", f"{generate} >&2 && base64 -w0 /tmp/image.png"],
                    "securityContext": security,
                    "resources": {"requests": {"cpu": "50m", "memory": "128Mi"}},
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                }
            ],
            "volumes": [{"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}}],
        },
    }


@contextlib.contextmanager
def sharing(paths: launcher.ClusterPaths) -> Iterator[None]:
    """`shared_use`, told nothing about an exception on the way out.

    Its last-user check returns from a `finally`, which would swallow a Ctrl-C in flight;
    exiting it as if all went well lets the exception go on up to `main`.
    """
    use = launcher.shared_use(paths)
    use.__enter__()
    try:
        yield
    finally:
        use.__exit__(None, None, None)


def start_cluster(stack: contextlib.ExitStack) -> Kube:
    step(1, "Building what is missing and starting the local cluster")
    say("binaries: Kubernetes, etcd, kwok, helm, CoreDNS from Go modules (cached after once)")
    subprocess.run(["bash", str(launcher.BUILD_SCRIPT)], check=True)
    paths = launcher.default_paths()
    # Shared with test sessions in this checkout: the last user out stops a cluster that
    # one of them started; one from `make cluster-up` is never stopped.
    stack.enter_context(sharing(paths))
    say("images: tti-server and tti-operator built with buildah (cached until a source changes)")
    try:
        started = launcher.up(paths, ephemeral=True, real_node=True)
    except launcher.ClusterError as error:
        raise DemoError(f"cluster: {error}") from None
    if not started:
        say("a cluster was already up: using it, and leaving it to whoever started it")
    kube = Kube(paths)
    indented(kube.kubectl("get", "nodes", "-o", "wide"))
    say(f"{node_config.NODE_NAME} runs pods for real; the kwok-gpu nodes are simulated")
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
        "--wait",
        "--timeout",
        "3m",
    )
    say("the operator's and the gateway's Deployments rolled out: their pods passed their probes")
    indented(
        kube.kubectl(
            "get",
            "pods",
            "-n",
            RELEASE_NAMESPACE,
            "-o",
            "wide",
            "-l",
            f"app.kubernetes.io/instance={RELEASE}",
        )
    )
    say(f"namespaced install: a Role in {DEMO_NAMESPACE!r} only, no ClusterRole")


def apply_model(kube: Kube, options: Options, out_dir: Path) -> str:
    step(3, f"Applying a TextToImageModel ({options.model})")
    weights = None
    if needs_weights(options):
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
    step(4, f"Waiting until ttimodel/{name} is Ready (its pod starts and passes its probes)")
    start = time.monotonic()
    seen = ""
    while True:
        status = kube.get_json("ttimodel", name, "-n", DEMO_NAMESPACE).get("status", {})
        ready: Obj = next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})
        now = (
            f"{status.get('phase', 'Pending')} {status.get('ready', '')} {ready.get('reason', '')}"
        )
        if now != seen:
            say(f"{time.monotonic() - start:5.1f} s  {now.strip()}")
            seen = now
        if ready.get("status") == "True":
            break
        if ready.get("reason") in ("CrashLoopBackOff", "ImagePullBackOff"):
            logs = kube.kubectl(
                "logs", f"deployment/{name}", "-n", DEMO_NAMESPACE, "--previous", "--tail=3",
                check=False,
            )  # fmt: skip
            raise DemoError(f"ttimodel/{name}: {ready.get('message', '')} {logs.strip()}")
        if time.monotonic() - start > READY_TIMEOUT_S:
            raise DemoError(
                f"ttimodel/{name} not Ready after {READY_TIMEOUT_S:.0f} s ({now.strip()}): "
                f"kubectl describe ttimodel {name} -n {DEMO_NAMESPACE}"
            )
        time.sleep(1)
    print(flush=True)
    indented(kube.kubectl("get", "ttimodels", "-n", DEMO_NAMESPACE))
    indented(kube.kubectl("get", "pods", "-n", DEMO_NAMESPACE, "-o", "wide"))


def pod_phase(kube: Kube, name: str) -> str:
    return kube.kubectl(
        "get", "pod", name, "-n", DEMO_NAMESPACE, "-o", "jsonpath={.status.phase}", check=False
    ).strip()


def gateway_selector(release: str) -> str:
    """The labels the chart puts on its gateway's Service and pods."""
    return f"app.kubernetes.io/component=gateway,app.kubernetes.io/instance={release}"


def name_and_port(service: Obj) -> tuple[str, int]:
    return service["metadata"]["name"], int(service["spec"]["ports"][0]["port"])


def gateway_service(kube: Kube) -> tuple[str, int]:
    """The chart's gateway Service: its name and port (one URL for every model)."""
    selector = gateway_selector(RELEASE)
    [service] = kube.get_json("services", "-n", RELEASE_NAMESPACE, "-l", selector)["items"]
    return name_and_port(service)


def call_from_a_pod(kube: Kube, name: str, options: Options, out_dir: Path) -> Path:
    gateway, port = gateway_service(kube)
    url = f"http://{gateway}.{RELEASE_NAMESPACE}.svc:{port}"
    step(5, f"Calling {name} through the gateway, {url}, from a client pod")
    say(
        f"one URL for every model (the model's own Service is http://{name}.{DEMO_NAMESPACE}.svc:8080)"
    )
    pod = client_pod(DEMO_NAMESPACE, url, name, options.size, options.prompt)
    say("$ " + pod["spec"]["containers"][0]["command"][2].split(" >&2")[0])
    kube.kubectl("delete", "pod", CLIENT_POD, "-n", DEMO_NAMESPACE, "--ignore-not-found")
    kube.kubectl("apply", "-f", "-", input=json.dumps(pod))
    start = time.monotonic()
    while (phase := pod_phase(kube, CLIENT_POD)) not in ("Succeeded", "Failed"):
        if time.monotonic() - start > READY_TIMEOUT_S:
            raise DemoError(
                f"the client pod is still {phase or 'Pending'} after {READY_TIMEOUT_S:.0f} s"
            )
        time.sleep(1)
    output = kube.kubectl("logs", CLIENT_POD, "-n", DEMO_NAMESPACE)
    kube.kubectl("delete", "pod", CLIENT_POD, "-n", DEMO_NAMESPACE, "--wait=false")
    if phase == "Failed":
        raise DemoError(f"the client pod failed: {output.strip()[-300:]}")
    image = base64.b64decode(output.strip().splitlines()[-1])
    path = out_dir / f"{name}.png"
    path.write_bytes(image)
    say(f"the pod got {len(image)} bytes of PNG in {time.monotonic() - start:.1f} s")
    return path


def run_helm_test(kube: Kube) -> None:
    step(6, f"helm test {RELEASE}: the chart's own check, a pod calling the model")
    indented(kube.helm("test", RELEASE, "-n", RELEASE_NAMESPACE, "--timeout", "3m", "--hide-notes"))


def real_and_simulated() -> None:
    say("Real: API server, etcd, controller manager, scheduler, kubelet, containerd, runc,")
    say("      kube-proxy, CoreDNS, the local-path provisioner's volumes, the images, probes,")
    say("      the Service, the operator's pod.")
    say("Simulated: GPUs only (kwok's GPU nodes); this model asked for none and ran on the CPU.")


@dataclass(frozen=True)
class Result:
    """What a finished demo run leaves up until its session ends."""

    kube: Kube
    model: str  # the TextToImageModel's name
    image: Path


@contextlib.contextmanager
def session(options: Options) -> Iterator[Result]:
    """Steps 1-6; yields with everything still running, tears it all down on exit."""
    out_dir = options.out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        try:
            kube = start_cluster(stack)
            install_chart(kube, stack, model_name(options))
            name = apply_model(kube, options, out_dir)
            wait_ready(kube, name)
            image = call_from_a_pod(kube, name, options, out_dir)
            run_helm_test(kube)
            print(f"\nImage saved: {image}", flush=True)
            real_and_simulated()
            yield Result(kube=kube, model=name, image=image)
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
    gateway, port = gateway_service(result.kube)
    # Inside the try: a Ctrl-C that lands right after the prompt is printed is the
    # expected one, not an interruption of the demo.
    try:
        print(
            f"\nEverything is still up. Try:\n"
            f"  export KUBECONFIG={kubeconfig}\n"
            f"  kubectl get ttimodels,pods -A\n"
            f"  kubectl port-forward -n {RELEASE_NAMESPACE} svc/{gateway} 8080:{port}\n"
            f"  then open http://127.0.0.1:8080/ (the playground, every model) or curl it\n"
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
        choices=list(CATALOGUE),
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
    size = args.size if args.size is not None else (128 if entry(args.model).default_repo else 256)
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
    # Ctrl-C tears everything down, also when started from a shell's background job (nohup,
    # `cmd &`), which hands its children SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
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
