"""The images the real node runs, built here without a Docker engine and without a registry.

buildah builds `Dockerfile.server` and `Dockerfile.operator` as they are; only their base is
swapped (a build argument) for a Debian bookworm image with Python that debootstrap makes from
Debian's packages. The node's own images (the pod sandbox's pause, CoreDNS) are one static
binary each. The base goes to the node as well: the local-path provisioner's helper pods run it
(a shell, mkdir and rm). Every image goes into buildah's store under the cache folder, then into
the node's containerd (namespace `k8s.io`, where the kubelet looks), so nothing is ever pulled.

An image is rebuilt only when what it is made of changes: its Dockerfile, the files the build
copies (pyproject.toml, README.md, common/, operator/, server/, gateway/), its base or its
build arguments. A label on the image records a hash of those inputs.

Stdlib only, like the launcher that calls it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from localcluster.util import log

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
INPUTS_LABEL = "dev.tti.inputs"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates")
BASE_IMAGE = f"localhost/tti-base:{DEBIAN_SUITE}"
# What the build context holds (.dockerignore lets exactly these through).
CONTEXT = ("pyproject.toml", "setup.py", "README.md", "common", "operator", "server", "gateway")
# Host files pip needs inside a build to reach the package index (a trust store that knows
# this network's TLS proxy, pip's own settings); mounted read-only, never baked in.
PIP_HOST_FILES = ("/etc/pip.conf", "/etc/ssl/certs/ca-certificates.crt")
GB = 1024**3


class ImageError(Exception):
    """A failure the user can act on; printed as one line."""


def cache_root() -> Path:
    """The same cache folder build-binaries.sh uses."""
    if root := os.environ.get("TTI_CACHE_DIR"):
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg) / "tti-operator"


def app_version() -> str:
    """The chart's appVersion: the tag the chart and the operator default to."""
    chart = (REPO_ROOT / "charts" / "tti-operator" / "Chart.yaml").read_text()
    found = re.search(r'^appVersion:\s*"?([^"\s]+)"?', chart, re.MULTILINE)
    if found is None:
        raise ImageError("charts/tti-operator/Chart.yaml has no appVersion")
    return found.group(1)


@dataclass(frozen=True)
class ProjectImage:
    """One of the project's Dockerfiles, built on the local base."""

    name: str
    dockerfile: str
    base_arg: str  # the ARG that names the Dockerfile's base image
    # Peak disk a build from nothing takes (measured): buildah commits a layer by writing it out
    # whole and storing it again beside the step's container, so the 6 GB torch layer costs ~3x.
    build_room_gb: int
    # containerd keeps the imported archive's blobs and unpacks them beside.
    import_room_gb: int

    @property
    def ref(self) -> str:
        return f"{self.name}:{app_version()}"


PROJECT_IMAGES = (
    ProjectImage(
        "tti-server", "Dockerfile.server", "CUDA_IMAGE", build_room_gb=20, import_room_gb=13
    ),
    ProjectImage(
        "tti-operator", "Dockerfile.operator", "PYTHON_IMAGE", build_room_gb=2, import_room_gb=1
    ),
)


@dataclass(frozen=True)
class BinaryImage:
    """A static binary alone in an image (FROM scratch), as the node's own images are."""

    ref: str
    binary: str
    entrypoint: tuple[str, ...]
    user: str = "65535:65535"


@dataclass
class Buildah:
    """buildah with a store of its own under the cache folder (not the host's podman store)."""

    root: Path = field(default_factory=lambda: cache_root() / "buildah")
    runroot: Path = Path("/run/tti-operator/buildah")

    def command(self, *args: str) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.root),
            "--runroot",
            str(self.runroot),
            "--storage-driver",
            "overlay",
            *args,
        ]

    def run(self, *args: str) -> str:
        result = subprocess.run(self.command(*args), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            detail = " | ".join(result.stderr.strip().splitlines()[-3:])
            raise ImageError(f"buildah {args[0]} failed: {detail}")
        return result.stdout.strip()

    def labels(self, ref: str) -> dict[str, str] | None:
        """The image's labels, or None when there is no such image."""
        result = subprocess.run(
            self.command("inspect", "--type", "image", ref),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            return None
        labels: dict[str, str] = json.loads(result.stdout)["OCIv1"]["config"].get("Labels") or {}
        return labels

    def image_id(self, ref: str) -> str:
        return self.run("inspect", "--type", "image", "--format", "{{.FromImageID}}", ref)

    def dangling(self) -> set[str]:
        """Untagged images: the step images `--layers` keeps as the build cache."""
        listed = self.run("images", "--all", "--filter", "dangling=true", "--no-trunc", "--quiet")
        return {line.removeprefix("sha256:") for line in listed.split()}

    def remove(self, image_id: str) -> None:
        subprocess.run(self.command("rmi", image_id), capture_output=True, check=False)

    def size(self, ref: str) -> str:
        """As buildah reports it ("6.46 GB")."""
        return self.run("images", "--format", "{{.Size}}", ref).splitlines()[0]


def digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:20]


def context_files() -> Iterator[Path]:
    for entry in CONTEXT:
        path = REPO_ROOT / entry
        if path.is_file():
            yield path
            continue
        for file in sorted(path.rglob("*")):
            skipped = {"__pycache__", "generated"} & set(file.parts) or file.suffix == ".pyc"
            if file.is_file() and not skipped and ".egg-info" not in str(file):
                yield file


def inputs_hash(image: ProjectImage, base_id: str) -> str:
    files = [
        str(f.relative_to(REPO_ROOT)).encode() + b"\0" + f.read_bytes() for f in context_files()
    ]
    dockerfile = (REPO_ROOT / image.dockerfile).read_bytes()
    return digest(dockerfile, base_id.encode(), image.base_arg.encode(), *files)


def require_room(path: Path, needed_gb: float, doing: str) -> None:
    """Fail at once, in one line, where a full disk would fail minutes later as buildah's
    "read/write on closed pipe" or a half-unpacked containerd image."""
    free_gb = shutil.disk_usage(path).free / GB
    if free_gb < needed_gb:
        raise ImageError(
            f"{doing} needs about {needed_gb:.0f} GB free on the disk of {path}; it has "
            f"{free_gb:.1f} GB (free some, or point TTI_CACHE_DIR at a bigger disk)"
        )


def is_current(buildah: Buildah, ref: str, wanted: str) -> bool:
    labels = buildah.labels(ref)
    return labels is not None and labels.get(INPUTS_LABEL) == wanted


@contextlib.contextmanager
def timed(what: str) -> Iterator[None]:
    start = time.monotonic()
    yield
    log(f"{what} in {time.monotonic() - start:.0f} s")


def stream(command: Sequence[str], log_path: Path, show: re.Pattern[str]) -> None:
    """Run `command`, its whole output to `log_path`, the lines matching `show` to the user."""
    with (
        log_path.open("w") as out,
        subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        ) as process,
    ):
        assert process.stdout is not None
        start = time.monotonic()
        for line in process.stdout:
            out.write(line)
            if show.search(line):
                print(f"    [{time.monotonic() - start:4.0f} s] {line.rstrip()[:110]}", flush=True)
    if process.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-12:]
        print("\n".join(f"    | {t}" for t in tail), file=sys.stderr)
        raise ImageError(f"{command[0]} failed (exit {process.returncode}); log: {log_path}")


# --- the images ---------------------------------------------------------------------------


def ensure_base(buildah: Buildah, log_dir: Path) -> str:
    """Debian bookworm with Python, from Debian's packages; returns its image ID."""
    wanted = digest(DEBIAN_SUITE.encode(), DEBIAN_MIRROR.encode(), *map(str.encode, BASE_PACKAGES))
    if is_current(buildah, BASE_IMAGE, wanted):
        return buildah.image_id(BASE_IMAGE)
    if shutil.which("debootstrap") is None:
        raise ImageError("debootstrap is missing: run `make node-deps` (Debian's packages)")
    log(f"making the base image {BASE_IMAGE} with debootstrap (about 90 s, once)")
    with timed(f"{BASE_IMAGE} made"), tempfile.TemporaryDirectory(dir=cache_root()) as tmp:
        rootfs = Path(tmp) / "rootfs"
        stream(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                DEBIAN_SUITE,
                str(rootfs),
                DEBIAN_MIRROR,
            ],
            log_dir / "debootstrap.log",
            re.compile(
                r"^I: (Retrieving Release|Validating Packages$|Installing core|"
                r"Unpacking the base|Configuring the base|Base system installed)"
            ),
        )
        shutil.rmtree(rootfs / "var" / "cache" / "apt" / "archives", ignore_errors=True)
        container = buildah.run("from", "scratch")
        try:
            mount = Path(buildah.run("mount", container))
            subprocess.run(["cp", "-a", f"{rootfs}/.", str(mount)], check=True)
            buildah.run("umount", container)
            buildah.run(
                "config",
                "--env",
                "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--cmd",
                '["/bin/bash"]',
                "--label",
                f"{INPUTS_LABEL}={wanted}",
                container,
            )
            buildah.run("commit", "--quiet", container, BASE_IMAGE)
        finally:
            buildah.run("rm", container)
    return buildah.image_id(BASE_IMAGE)


def build_args_for_pip() -> list[str]:
    """Read-only mounts that let pip in a build reach the index as it does on this host."""
    mounts = [f"{path}:{path}:ro" for path in PIP_HOST_FILES if Path(path).is_file()]
    pip_cache = Path.home() / ".cache" / "pip"
    pip_cache.mkdir(parents=True, exist_ok=True)
    # The Dockerfiles mount a cache at /root/.cache/pip; this puts the host's there instead.
    mounts.append(f"{pip_cache}:/root/.cache/pip")
    return [arg for mount in mounts for arg in ("-v", mount)]


def ensure_project_image(
    buildah: Buildah, image: ProjectImage, base_id: str, log_dir: Path
) -> None:
    wanted = inputs_hash(image, base_id)
    if is_current(buildah, image.ref, wanted):
        log(f"{image.ref} is up to date")
        return
    require_room(cache_root(), image.build_room_gb, f"building {image.ref}")
    log(f"building {image.ref} from {image.dockerfile} with buildah (log: {log_dir})")
    command = buildah.command(
        "bud",
        "--isolation",
        "chroot",
        "--layers",
        "--file",
        str(REPO_ROOT / image.dockerfile),
        "--build-arg",
        f"{image.base_arg}={BASE_IMAGE}",
        "--label",
        f"{INPUTS_LABEL}={wanted}",
        "--tag",
        image.ref,
        *build_args_for_pip(),
        str(REPO_ROOT),
    )
    before = buildah.dangling()
    log_path = log_dir / f"build-{image.name}.log"
    with timed(f"{image.ref} built"):
        stream(
            command,
            log_path,
            re.compile(
                r"^(\[\d+/\d+\] )?STEP \d+/\d+|^Collecting (torch|diffusers|transformers)\b|"
                r"^Installing collected|^COMMIT"
            ),
        )
    log(f"{image.ref}: {buildah.size(image.ref)}")
    reused = set(re.findall(r"Using cache ([0-9a-f]{64})", log_path.read_text()))
    keep_step_images(buildah, image.name, (buildah.dangling() - before) | reused)


def keep_step_images(buildah: Buildah, name: str, steps: set[str]) -> None:
    """Record the step images (the `--layers` cache) this build of `name` made or reused, and
    remove the ones its previous build recorded that it no longer needs: gigabytes each for
    the server. Only the image's own are touched, so building one image never throws away
    another's cache (the server's torch layer survives an operator build)."""
    record = cache_root() / "step-images.json"
    recorded = json.loads(record.read_text()) if record.exists() else {}
    for stale in set(recorded.get(name, ())) - steps:
        buildah.remove(stale)
    recorded[name] = sorted(steps)
    record.write_text(json.dumps(recorded, indent=1))


def ensure_binary_image(buildah: Buildah, image: BinaryImage, binary: Path) -> None:
    wanted = digest(binary.read_bytes(), *map(str.encode, image.entrypoint), image.user.encode())
    if is_current(buildah, image.ref, wanted):
        return
    container = buildah.run("from", "scratch")
    try:
        buildah.run("copy", container, str(binary), f"/{image.binary}")
        buildah.run(
            "config",
            "--entrypoint",
            json.dumps(list(image.entrypoint)),
            "--user",
            image.user,
            "--label",
            f"{INPUTS_LABEL}={wanted}",
            container,
        )
        buildah.run("commit", "--quiet", container, image.ref)
    finally:
        buildah.run("rm", container)
    log(f"{image.ref} made from {binary.name}")


def build_all(bin_dir: Path, node_images: Sequence[BinaryImage], log_dir: Path) -> list[str]:
    """Every image the real node runs, built when missing or stale; returns their refs."""
    log_dir.mkdir(parents=True, exist_ok=True)
    cache_root().mkdir(parents=True, exist_ok=True)
    # One builder at a time per store (two test sessions may start at once).
    with open(cache_root() / "images.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return build_locked(bin_dir, node_images, log_dir)


def build_locked(bin_dir: Path, node_images: Sequence[BinaryImage], log_dir: Path) -> list[str]:
    buildah = Buildah()
    for image in node_images:
        ensure_binary_image(buildah, image, bin_dir / image.binary)
    base_id = ensure_base(buildah, log_dir)
    for project_image in PROJECT_IMAGES:
        ensure_project_image(buildah, project_image, base_id, log_dir)
    # A build stopped half-way leaves its working containers (gigabytes each) behind.
    buildah.run("rm", "--all")
    refs = [image.ref for image in node_images] + [BASE_IMAGE]
    return refs + [image.ref for image in PROJECT_IMAGES]


# --- into containerd ----------------------------------------------------------------------


def containerd_name(ref: str) -> str:
    """The name containerd (and the kubelet) give `ref`: docker.io/library/ for a bare name."""
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return ref
    return f"docker.io/{ref}" if "/" in ref else f"docker.io/library/{ref}"


def import_into_containerd(refs: Sequence[str], ctr: Sequence[str], crictl: Sequence[str]) -> None:
    """Each image into containerd's k8s.io namespace, unless the same image is there."""
    buildah = Buildah()
    room_gb = {image.ref: image.import_room_gb for image in PROJECT_IMAGES}
    for ref in refs:
        name = containerd_name(ref)
        image_id = buildah.image_id(ref)
        present = subprocess.run(
            [*crictl, "inspecti", "-o", "go-template", "--template", "{{.status.id}}", name],
            capture_output=True,
            text=True,
            check=False,
        )
        if present.returncode == 0 and present.stdout.strip().removeprefix("sha256:") == image_id:
            continue
        require_room(cache_root(), room_gb.get(ref, 0), f"importing {name} into containerd")
        log(f"importing {name} into the node's containerd ({buildah.size(ref)})")
        with timed(f"{name} imported"):
            # Streamed: a multi-gigabyte image is never written out as an archive.
            push = subprocess.Popen(
                buildah.command("push", "--quiet", ref, f"docker-archive:/dev/stdout:{name}"),
                stdout=subprocess.PIPE,
            )
            result = subprocess.run(
                [*ctr, "images", "import", "-"],
                stdin=push.stdout,
                capture_output=True,
                text=True,
                check=False,
            )
            assert push.stdout is not None
            push.stdout.close()
            if push.wait() != 0 or result.returncode != 0:
                raise ImageError(
                    f"importing {name} into containerd failed: {result.stderr.strip()}"
                )
