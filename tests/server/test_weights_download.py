"""`tti-server download` as a process against a local Hugging Face-compatible hub.

The hub (`support.hf_endpoint`) serves the tiny SDXL pipeline as a repository shaped like
stabilityai/sdxl-turbo: fp16 variants beside the plain weights, a pickled copy of the UNet
and a single-file checkpoint at the top, none of which a plain fetch may take. The fetched
snapshot is then loaded by a real `tti-server` with the hub switched off (`HF_HUB_OFFLINE=1`,
an endpoint that refuses connections) from a read-only bind mount of the cache, as model
pods mount it. Every failure must end in one classified line and its exit status.

Mounting (the read-only view, the small disks) needs root, as the cluster tests do; without
it those tests skip.
"""

from __future__ import annotations

import contextlib
import filecmp
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from huggingface_hub import scan_cache_dir
from support.hf_endpoint import HubEndpoint
from support.server import StartServer, server_command

from tti_server.weights import CAUSES, format_bytes, pipeline_files

REPO = "tti-test/tiny-sdxl"
GATED = "tti-test/gated-sdxl"
NOT_A_PIPELINE = "tti-test/just-a-unet"
BIG = "tti-test/big-unet-sdxl"  # a UNet file larger than the client's 10 MiB download chunk
BIG_UNET = "unet/diffusion_pytorch_model.safetensors"
GOOD_TOKEN = "hf_ttiTestGoodToken0123456789"
OTHER_TOKEN = "hf_ttiTestOtherToken9876543210"
#: Files of REPO that no fetch may take.
NEVER_FETCHED = ("sd_xl_turbo_1.0.safetensors", "unet/diffusion_pytorch_model.bin", "README.md")
REFUSED = "http://127.0.0.1:9"  # nothing listens on the discard port
PROCESS_TIMEOUT_S = 120


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str

    @property
    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.stdout.splitlines()]

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1]

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["event"] == kind]


def exit_code(reason: str) -> int:
    return CAUSES[reason].exit_code


# --- The repository and the hub ---------------------------------------------------------------


def write_hub_repo(tiny_model_dir: Path, path: Path) -> None:
    """The tiny pipeline laid out as sdxl-turbo is on the hub: fp16 variants (real fp16
    tensors) beside the plain weights, plus files a pipeline fetch must leave alone."""
    import torch
    from safetensors.torch import load_file, save_file

    shutil.copytree(tiny_model_dir, path)
    for weights in sorted(path.glob("*/*.safetensors")):
        half = {name: t.half().contiguous() for name, t in load_file(weights).items()}
        save_file(half, weights.with_suffix(".fp16.safetensors"))
    unet = path / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(unet), path / "unet" / "diffusion_pytorch_model.bin")
    shutil.copyfile(unet, path / "sd_xl_turbo_1.0.safetensors")
    (path / "README.md").write_text("---\nlibrary_name: diffusers\n---\nA tiny test pipeline.\n")


@pytest.fixture(scope="module")
def hub_repo_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("hub") / "tiny-sdxl"
    write_hub_repo(tiny_model_dir, path)
    return path


@pytest.fixture(scope="module")
def big_repo_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("hub") / "big-unet-sdxl"
    shutil.copytree(tiny_model_dir, path)
    generator = torch.Generator().manual_seed(0)
    save_file({"weight": torch.rand(5 * 2**20, generator=generator)}, path / BIG_UNET)  # 20 MiB
    return path


@pytest.fixture(scope="module")
def hub_server(
    hub_repo_dir: Path, big_repo_dir: Path, tiny_model_dir: Path
) -> Iterator[HubEndpoint]:
    hub = HubEndpoint()
    hub.add_repo(REPO, hub_repo_dir)
    hub.add_repo(BIG, big_repo_dir)
    hub.add_repo(GATED, tiny_model_dir, gated_tokens={GOOD_TOKEN})
    hub.add_repo(NOT_A_PIPELINE, tiny_model_dir / "unet")
    with hub:
        yield hub


@pytest.fixture
def hub(hub_server: HubEndpoint) -> Iterator[HubEndpoint]:
    hub_server.reset()
    yield hub_server
    hub_server.reset()


def hermetic_env(home: Path, endpoint: str, **extra: str) -> dict[str, str]:
    """No token, cache or hub setting of the caller's leaks in."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HF_", "HUGGINGFACE_", "TTI_")) and k != "XDG_CACHE_HOME"
    }
    return {**env, "HF_HOME": str(home), "HF_ENDPOINT": endpoint, **extra}


def download(home: Path, endpoint: str, *args: str, **env: str) -> Run:
    result = subprocess.run(
        [*server_command(), "download", *args],
        capture_output=True,
        text=True,
        env=hermetic_env(home, endpoint, **env),
        timeout=PROCESS_TIMEOUT_S,
    )
    return Run(result.returncode, result.stdout, result.stderr)


def assert_failed(run: Run, reason: str, line: str) -> None:
    """Exit status of the cause, one line on stderr, the same in the last JSON line."""
    assert run.returncode == exit_code(reason), run.stderr
    assert run.stderr.splitlines() == [f"tti-server download: error: {line}"]
    assert run.last == {
        "event": "failed",
        "reason": reason,
        "retryable": CAUSES[reason].retryable,
        "message": line,
    }


def snapshot_files(snapshot: Path) -> set[str]:
    return {p.relative_to(snapshot).as_posix() for p in snapshot.rglob("*") if p.is_file()}


# --- Mounts -------------------------------------------------------------------------------------


def mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount (needs root): {result.stderr.strip()}")


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A small disk of its own at `path`, gone afterwards."""
    path.mkdir()
    mount("-t", "tmpfs", "-o", options, "tmpfs", str(path))
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


@contextlib.contextmanager
def read_only_view(source: Path, path: Path) -> Iterator[Path]:
    """`source` seen read-only at `path`, as a pod sees a volume mounted readOnly."""
    path.mkdir()
    mount("--bind", str(source), str(path))
    try:
        mount("-o", "remount,bind,ro", str(path))
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


# --- A fetch, and loading it offline --------------------------------------------------------------


@dataclass
class Fetched:
    cache: Path
    run: Run
    sent: dict[str, int]


@pytest.fixture(scope="module")
def fetched(hub_server: HubEndpoint, tmp_path_factory: pytest.TempPathFactory) -> Fetched:
    """REPO fetched once into a fresh cache, with what the hub sent for it."""
    hub_server.reset()
    cache = tmp_path_factory.mktemp("cache")
    home = tmp_path_factory.mktemp("home")
    status = cache.parent / "status.json"
    run = download(
        home, hub_server.url, REPO, "--cache-dir", str(cache), "--status-file", str(status)
    )
    assert (run.returncode, run.stderr) == (0, "")
    assert json.loads(status.read_text()) == run.last
    return Fetched(cache, run, hub_server.bytes_sent(REPO))


def test_fetch_resolves_the_commit_and_takes_only_the_pipeline(
    fetched: Fetched, hub_server: HubEndpoint, hub_repo_dir: Path
) -> None:
    repo = hub_server.repos[REPO]
    done = fetched.run.last
    snapshot = fetched.cache / f"hub/models--tti-test--tiny-sdxl/snapshots/{repo.commit}"
    assert done["event"] == "done"
    assert (done["commit"], done["revision"], done["snapshot"]) == (
        repo.commit,
        "main",
        str(snapshot),
    )
    expected = {path for path in repo.files if path not in NEVER_FETCHED and ".fp16." not in path}
    assert snapshot_files(snapshot) == expected
    for path in expected:
        assert filecmp.cmp(snapshot / path, hub_repo_dir / path, shallow=False), path
    # Nothing but those files left the hub (identical files may share one blob: at most once each).
    assert set(fetched.sent) <= expected
    assert sum(fetched.sent.values()) == done["bytes_fetched"]
    assert done["bytes_total"] == sum(repo.files[path].size for path in expected)
    assert (snapshot.parent.parent / "refs" / "main").read_text() == repo.commit
    # huggingface_hub's own tools read hub/ as a cache of theirs, with nothing foreign in it.
    info = scan_cache_dir(fetched.cache / "hub")
    assert info.warnings == [] and [r.repo_id for r in info.repos] == [REPO]
    artefacts = fetched.cache / f"tti/models--tti-test--tiny-sdxl/{repo.commit}/artefacts"
    assert done["artefacts"] == str(artefacts) and artefacts.is_dir()
    record = json.loads((artefacts.parent / "fetched.json").read_text())
    assert (record["commit"], record["bytes"], sorted(record["files"])) == (
        repo.commit,
        done["bytes_total"],
        sorted(expected),
    )


def test_progress_is_reported_as_bytes_done_of_total(fetched: Fetched) -> None:
    [resolved] = fetched.run.of("resolved")
    progress = fetched.run.of("progress")
    total = resolved["bytes_total"]
    assert progress, fetched.run.stdout
    assert all(event["bytes_total"] == total for event in progress)
    done = [event["bytes_done"] for event in progress]
    assert done == sorted(done) and done[-1] == total
    assert progress[-1]["message"] == f"{format_bytes(total)} of {format_bytes(total)}"


def test_progress_lines_come_while_it_fetches(hub: HubEndpoint, tmp_path: Path) -> None:
    hub.chunk_delay = 0.02  # seconds a 64 KiB chunk: the UNet's 8 MB take 2.5 s
    run = download(
        tmp_path, hub.url, REPO, "--cache-dir", str(tmp_path / "c"), "--progress-interval", "0.1"
    )
    assert run.returncode == 0, run.stderr
    total = run.of("resolved")[0]["bytes_total"]
    underway = {e["bytes_done"] for e in run.of("progress") if 0 < e["bytes_done"] < total}
    assert len(underway) >= 3, run.stdout


def test_a_dropped_connection_is_resumed_with_a_range(hub: HubEndpoint, tmp_path: Path) -> None:
    """The client keeps what it has in whole 10 MiB chunks and asks for the rest with `Range`."""
    size = hub.repos[BIG].files[BIG_UNET].size
    hub.cut_after = 12 * 2**20
    run = download(tmp_path, hub.url, BIG, "--cache-dir", str(tmp_path / "c"))
    assert (run.returncode, run.stderr) == (0, "")  # the client's retry warnings stay quiet
    assert filecmp.cmp(
        Path(run.last["snapshot"]) / BIG_UNET, hub.repos[BIG].files[BIG_UNET].source, shallow=False
    )
    assert any(f"{BIG_UNET} Range: bytes=" in line for line in hub.requests), hub.requests
    assert size < hub.bytes_sent(BIG)[BIG_UNET] < hub.cut_after + size  # not all of it again


def test_a_second_fetch_of_the_same_revision_fetches_nothing(
    fetched: Fetched, hub: HubEndpoint, tmp_path: Path
) -> None:
    repo = hub.repos[REPO]
    for revision in ("main", repo.commit):
        run = download(
            tmp_path, hub.url, REPO, "--cache-dir", str(fetched.cache), "--revision", revision
        )
        assert run.returncode == 0, run.stderr
        assert run.of("resolved")[0]["bytes_to_fetch"] == 0
        assert (run.last["commit"], run.last["bytes_fetched"]) == (repo.commit, 0)
    assert hub.total_bytes_sent() == 0


def test_fetched_snapshot_loads_offline_from_a_read_only_cache(
    fetched: Fetched, start_server: StartServer, tmp_path: Path
) -> None:
    with read_only_view(fetched.cache, tmp_path / "ro") as cache:
        snapshot = cache / Path(fetched.run.last["snapshot"]).relative_to(fetched.cache)
        with pytest.raises(OSError, match="Read-only file system"):
            (snapshot / "written-by-a-pod").write_text("no")
        env = hermetic_env(tmp_path / "home", REFUSED, HF_HUB_OFFLINE="1")
        server = start_server(
            "--model", "sdxl-turbo", "--model-path", str(snapshot), "--model-id", "cached",
            env=env,
        )  # fmt: skip
        try:
            response = httpx.post(
                server.url + "/v1/images/generations",
                json={"model": "cached", "prompt": "a lighthouse", "size": "64x64"},
                timeout=120,
            )
            assert response.status_code == 200, response.text
            assert response.json()["data"][0]["b64_json"]
        finally:
            server.stop()


# --- Which files, against diffusers' own choice -------------------------------------------------

DIFFUSERS_DOWNLOAD = """
import sys
from diffusers import DiffusionPipeline
print(DiffusionPipeline.download(sys.argv[1], cache_dir=sys.argv[2], variant=sys.argv[3] or None))
"""


@pytest.mark.parametrize("variant", [None, "fp16"])
def test_the_files_fetched_are_those_diffusers_fetches(
    hub: HubEndpoint, tmp_path: Path, variant: str | None
) -> None:
    variant_args = ["--variant", variant] if variant else []
    ours = download(
        tmp_path / "home", hub.url, REPO, "--cache-dir", str(tmp_path / "ours"), *variant_args
    )
    assert ours.returncode == 0, ours.stderr
    theirs = subprocess.run(
        [sys.executable, "-c", DIFFUSERS_DOWNLOAD, REPO, str(tmp_path / "theirs"), variant or ""],
        capture_output=True,
        text=True,
        env=hermetic_env(tmp_path / "home", hub.url),
        timeout=PROCESS_TIMEOUT_S,
        check=True,
    )
    diffusers_snapshot = Path(theirs.stdout.strip().splitlines()[-1])
    our_files = snapshot_files(Path(ours.last["snapshot"]))
    assert our_files == snapshot_files(diffusers_snapshot)
    assert all(
        (".fp16." in path) == bool(variant) for path in our_files if path.endswith(".safetensors")
    )


SDXL_TURBO_FILES = [
    ".gitattributes", "LICENSE.md", "README.md", "image.png", "model_index.json",
    "scheduler/scheduler_config.json",
    "sd_xl_turbo_1.0.safetensors", "sd_xl_turbo_1.0_fp16.safetensors",
    "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json", "text_encoder_2/model.fp16.safetensors",
    "text_encoder_2/model.safetensors",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    "tokenizer_2/merges.txt", "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json", "tokenizer_2/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "vae/config.json", "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
]  # fmt: skip
SDXL_INDEX = {
    "_class_name": "StableDiffusionXLPipeline",
    "_diffusers_version": "0.24.0.dev0",
    "feature_extractor": [None, None],
    "force_zeros_for_empty_prompt": True,
    "image_encoder": [None, None],
    "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
    "text_encoder": ["transformers", "CLIPTextModel"],
    "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
    "tokenizer": ["transformers", "CLIPTokenizer"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
    "unet": ["diffusers", "UNet2DConditionModel"],
    "vae": ["diffusers", "AutoencoderKL"],
}
SDXL_COMMON = [
    "model_index.json", "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder_2/config.json",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json", "tokenizer/vocab.json",
    "tokenizer_2/merges.txt", "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json", "tokenizer_2/vocab.json",
    "unet/config.json", "vae/config.json",
]  # fmt: skip


@pytest.mark.parametrize(
    ("variant", "weights"),
    [
        (
            None,
            [
                "text_encoder/model.safetensors",
                "text_encoder_2/model.safetensors",
                "unet/diffusion_pytorch_model.safetensors",
                "vae/diffusion_pytorch_model.safetensors",
            ],
        ),
        (
            "fp16",
            [
                "text_encoder/model.fp16.safetensors",
                "text_encoder_2/model.fp16.safetensors",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/diffusion_pytorch_model.fp16.safetensors",
            ],
        ),
    ],
)
def test_sdxl_turbo_listing(variant: str | None, weights: list[str]) -> None:
    """The real repository's listing: one precision of the four components, no checkpoints."""
    assert pipeline_files(SDXL_TURBO_FILES, SDXL_INDEX, variant) == sorted(SDXL_COMMON + weights)


def test_shards_pickles_and_a_component_without_the_variant() -> None:
    index = {"_class_name": "P", "unet": ["diffusers", "U"], "text_encoder": ["transformers", "T"]}
    files = [
        "model_index.json",
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
        "unet/diffusion_pytorch_model-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.json",
        "unet/diffusion_flax_model.msgpack",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",
        "text_encoder/model.onnx",
    ]
    assert pipeline_files(files, index, "fp16") == [
        "model_index.json",
        "text_encoder/config.json",
        "text_encoder/model.safetensors",  # no fp16 file: the plain one
        "unet/config.json",
        "unet/diffusion_pytorch_model.fp16-00001-of-00002.safetensors",
        "unet/diffusion_pytorch_model.fp16-00002-of-00002.safetensors",
        "unet/diffusion_pytorch_model.safetensors.index.fp16.json",
    ]
    # One component with pickles only: every component's pickles, as diffusers does.
    pickled = [
        f.replace("text_encoder/model.safetensors", "text_encoder/pytorch_model.bin") for f in files
    ]
    pickled.append("unet/diffusion_pytorch_model.bin")
    assert pipeline_files(pickled, index, None) == [
        "model_index.json",
        "text_encoder/config.json",
        "text_encoder/pytorch_model.bin",
        "unet/config.json",
        "unet/diffusion_pytorch_model.bin",
    ]


# --- Failures -----------------------------------------------------------------------------------


def test_unknown_repository(hub: HubEndpoint, tmp_path: Path) -> None:
    run = download(tmp_path, hub.url, "tti-test/nope", "--cache-dir", str(tmp_path / "cache"))
    assert_failed(
        run,
        "RepositoryNotFound",
        "unknown repository tti-test/nope: HTTP 404: Repository not found",
    )


def test_unknown_revision(hub: HubEndpoint, tmp_path: Path) -> None:
    run = download(tmp_path, hub.url, REPO, "--revision", "v9", "--cache-dir", str(tmp_path / "c"))
    assert_failed(
        run, "RevisionNotFound", f"unknown revision v9 of {REPO}: HTTP 404: Invalid rev id: v9"
    )


def test_gated_repository_without_a_token(hub: HubEndpoint, tmp_path: Path) -> None:
    run = download(tmp_path, hub.url, GATED, "--cache-dir", str(tmp_path / "cache"))
    assert_failed(
        run,
        "GatedRepository",
        f"gated repository {GATED} (no token was given): HTTP 401: Access to model {GATED} "
        "is restricted. You must have access to it and be authenticated to access it. "
        "Please log in.",
    )
    assert hub.total_bytes_sent() == 0


def test_gated_repository_with_a_token_it_refuses(hub: HubEndpoint, tmp_path: Path) -> None:
    run = download(
        tmp_path, hub.url, GATED, "--cache-dir", str(tmp_path / "c"), HF_TOKEN=OTHER_TOKEN
    )
    assert run.returncode == exit_code("GatedRepository")
    assert run.stderr.startswith(
        f"tti-server download: error: gated repository {GATED} (the token has no access): "
        f"HTTP 403: Access to model {GATED} is restricted and you are not in the authorized list."
    )
    assert OTHER_TOKEN not in run.stdout + run.stderr


def test_gated_repository_with_its_token_from_a_file(hub: HubEndpoint, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(GOOD_TOKEN + "\n")
    cache = tmp_path / "cache"
    run = download(
        tmp_path, hub.url, GATED, "--cache-dir", str(cache), "--token-file", str(token_file)
    )
    assert run.returncode == 0, run.stderr
    assert run.last["commit"] == hub.repos[GATED].commit
    assert run.last["bytes_fetched"] == hub.total_bytes_sent(GATED) > 0
    assert GOOD_TOKEN not in run.stdout + run.stderr
    assert not any(GOOD_TOKEN in p.read_text(errors="ignore") for p in cache.rglob("*.json"))


def test_a_repository_that_is_no_pipeline(hub: HubEndpoint, tmp_path: Path) -> None:
    run = download(tmp_path, hub.url, NOT_A_PIPELINE, "--cache-dir", str(tmp_path / "cache"))
    commit = hub.repos[NOT_A_PIPELINE].commit
    assert_failed(
        run,
        "NotAPipeline",
        f"not a diffusers pipeline {NOT_A_PIPELINE}: no model_index.json at {commit}",
    )
    assert hub.total_bytes_sent() == 0


def test_one_file_is_fetched_alone(hub: HubEndpoint, tmp_path: Path) -> None:
    """`--file`: a LoRA adapter's one file, from a repository that is no pipeline, in the
    hub layout the model pods read (the operator's adapter fetch Jobs)."""
    cache = tmp_path / "cache"
    name = "diffusion_pytorch_model.safetensors"
    status = tmp_path / "status.json"
    args = ["--cache-dir", str(cache), "--file", name, "--status-file", str(status)]
    run = download(tmp_path / "home", hub.url, NOT_A_PIPELINE, *args)
    assert (run.returncode, run.stderr) == (0, "")
    commit = hub.repos[NOT_A_PIPELINE].commit
    snapshot = cache / f"hub/models--{NOT_A_PIPELINE.replace('/', '--')}/snapshots/{commit}"
    assert run.last["event"] == "done" and run.last["commit"] == commit
    assert json.loads(status.read_text()) == run.last
    assert snapshot_files(snapshot) == {name}
    assert set(hub.bytes_sent(NOT_A_PIPELINE)) == {name}
    assert run.last["bytes_total"] == hub.repos[NOT_A_PIPELINE].files[name].size


def test_a_file_the_repository_lacks(hub: HubEndpoint, tmp_path: Path) -> None:
    cache = str(tmp_path / "cache")
    run = download(tmp_path, hub.url, REPO, "--cache-dir", cache, "--file", "lora.safetensors")
    commit = hub.repos[REPO].commit
    assert_failed(run, "FileNotFound", f"no such file in {REPO}: no lora.safetensors at {commit}")
    assert hub.total_bytes_sent() == 0
    outside = download(tmp_path, hub.url, REPO, "--cache-dir", cache, "--file", "../x")
    assert outside.returncode == 2 and "--file: '../x' is not a path" in outside.stderr


def test_hub_answering_500(hub: HubEndpoint, tmp_path: Path) -> None:
    hub.failure = "500"
    run = download(tmp_path, hub.url, REPO, "--cache-dir", str(tmp_path / "cache"))
    assert_failed(
        run,
        "HubError",
        f"hub error {hub.url}: HTTP 500: "
        "Internal Error - We're working hard to fix this as soon as possible!",
    )


def test_hub_that_hangs(hub: HubEndpoint, tmp_path: Path) -> None:
    hub.failure = "hang"
    run = download(tmp_path, hub.url, REPO, "--cache-dir", str(tmp_path / "c"), "--timeout", "1")
    assert_failed(run, "HubUnreachable", f"unreachable hub {hub.url}: no answer within 1 s")


def test_hub_that_refuses_connections(tmp_path: Path) -> None:
    run = download(tmp_path, REFUSED, REPO, "--cache-dir", str(tmp_path / "cache"))
    assert_failed(
        run,
        "HubUnreachable",
        f"unreachable hub {REFUSED}: ConnectError: [Errno 111] Connection refused",
    )


def test_a_disk_too_small_for_the_files(hub: HubEndpoint, tmp_path: Path) -> None:
    with tmpfs(tmp_path / "small", "size=2m") as cache:
        run = download(tmp_path, hub.url, REPO, "--cache-dir", str(cache))
        assert run.returncode == exit_code("DiskFull"), run.stderr
        assert run.stderr.startswith(
            f"tti-server download: error: disk full {cache}/hub: 11.2 MB to fetch, "
        )
        assert run.stderr.rstrip().endswith("free")
    # It stopped before the weights: only model_index.json, read to choose them, came.
    assert set(hub.bytes_sent(REPO)) == {"model_index.json"}


def test_a_cache_claim_too_small_for_the_files(hub: HubEndpoint, tmp_path: Path) -> None:
    """`--room`: the claim's size, which a host-path volume does not enforce by itself."""
    cache = tmp_path / "claim"
    run = download(tmp_path, hub.url, REPO, "--cache-dir", str(cache), "--room", "1048576")
    assert_failed(
        run, "DiskFull", f"disk full {cache}/hub: the files need 11.2 MB, the cache holds 1.0 MB"
    )
    assert set(hub.bytes_sent(REPO)) == {"model_index.json"}


def test_a_disk_that_fills_up_while_fetching(hub: HubEndpoint, tmp_path: Path) -> None:
    """Room enough by bytes, but too few inodes: the writes themselves fail (ENOSPC)."""
    with tmpfs(tmp_path / "few-inodes", "size=64m,nr_inodes=16") as cache:
        run = download(tmp_path, hub.url, REPO, "--cache-dir", str(cache))
        assert_failed(run, "DiskFull", f"disk full {cache}: No space left on device")
        assert run.of("resolved"), "the bytes fit: it failed writing, not in the space check"


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["bad", "--cache-dir", "x"], "REPO: 'bad' is not a repository id ORG/NAME"),
        ([REPO, "--cache-dir", "x", "--timeout", "0"], "argument --timeout: must be more than 0"),
        (
            [REPO, "--cache-dir", "x", "--token-file", "/nonexistent/token"],
            "--token-file: cannot read /nonexistent/token",
        ),
    ],
)
def test_bad_arguments_exit_2_naming_the_argument(
    tmp_path: Path, args: list[str], complaint: str
) -> None:
    run = download(tmp_path, REFUSED, *args)
    assert run.returncode == 2
    assert f"tti-server download: error: {complaint}" in run.stderr
