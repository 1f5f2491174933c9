"""The device run: one script, at most 8 minutes, for the session that is lent a GPU.

It builds the full-size SDXL-Turbo architecture with random weights on the GPU (fp16,
the timing of the real model; see bench_sdxl_gpu.py), then serves it with the real
`tti-server` once per optimisation setting and prints one table:

* start-up: seconds from the process's start until /readyz answers 200 (loading, and
  the server's own warm-up; a compiled setting compiles every batch size there, into an
  empty compile cache), and for a compiled setting a second start on the cache the first
  left (`--compile-cache-dir`, as the next pod of a model finds it); then the warm-up this
  script adds at 512x512 for batches of 1, 4 and 8;
* p50 of one 512x512 one-step request through HTTP (caikit JSON), PNG and JPEG;
* images/s with 1, 4 and 8 closed-loop clients (JPEG), and the mean images per
  pipeline call at 4 and 8 (from /metrics), with the setting's `--max-batch-size`.

The settings are data (`Scale.settings`): no speed-ups and `channels_last,fuse_qkv` (both
at `--max-batch-size 8`), then those speed-ups with `--optimisation compile` (the UNet and
the VAE decoder compiled ahead of serving, one static graph per batch size) and, on the GPU
only, `--optimisation compile-cudagraphs` (the same in CUDA graphs). With one static-shape
UNet to compile, a server on an H100 was ready only after 126 s (docs/benchmarks.md), so
the compiled settings serve `--max-batch-size 1` there (the table's "max b"): one batch
size to compile, which fits the budget twice (the start on an empty cache, then on the
first's). With the default budget the CUDA graphs setting gets what the others leave, too
little, so a second run measures it alone (`--settings compile-cudagraphs --keep DIR`).
Each setting is served with an fp16-safe VAE config, as a deployment with madebyollin's
sdxl-vae-fp16-fix would be.
Every phase has a budget, printed at the start; a setting starts only if its minimum
fits in what is left, and stops measuring at the end of its budget, keeping what it
measured (the rest of its row reads "-"). The whole run ends within `--budget-s`
(default 480) plus the time to stop a server.

`--dry-run` does the same on the CPU with the offline tiny model at 64x64 and a few
requests per figure, within a budget of 150 s (about 40 s on an idle machine): CI runs
it (tests/sdxl/test_device_run_dry.py), so the script is known to work before a device
is lent.

    PYTHONPATH=$PWD/common:$PWD/server:$PWD/tests python3 tests/benchmarks/device_run.py
    .venv/bin/python tests/benchmarks/device_run.py --dry-run
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_sdxl_gpu as gpu  # noqa: E402
from support.server import ServerExited, ServerProcess, launch_server  # noqa: E402

from tti_contracts.api import OPTIMISATIONS, Optimisation  # noqa: E402
from tti_server.backends.base import Speedups  # noqa: E402

PATH = "/api/v1/task/text-to-image"
CLIENTS = (1, 4, 8)
MAX_BATCH = 8
STARTED = time.monotonic()


#: The server's log line for a compiled worker (tti_server/backends/compiled.py).
COMPILED_LINE = re.compile(r"compiled .* graphs\) into \S+")


@dataclass(frozen=True)
class Setting:
    """One optimisation setting: the server's flags for it, and its time on the device."""

    name: str
    speedups: str
    budget_s: float  # the most this setting may take, start-ups included
    minimum_s: float  # the least worth starting with: start-ups and the latency figures
    optimisation: Optimisation = "none"
    max_batch: int = MAX_BATCH

    @property
    def compiles(self) -> bool:
        return self.optimisation != "none"


@dataclass(frozen=True)
class Scale:
    """What the run builds and how long each part of it may take."""

    name: str
    model: gpu.Scale
    budget_s: float
    build_s: float
    latency_samples: int
    requests_per_client: dict[int, int]
    settings: tuple[Setting, ...]
    server_env: dict[str, str] = field(default_factory=dict)


FULL = Scale(
    "full",
    gpu.FULL,
    budget_s=480,
    build_s=90,
    latency_samples=12,
    requests_per_client={1: 16, 4: 8, 8: 8},
    settings=(
        Setting("eager", "", budget_s=80, minimum_s=40),
        Setting("fast", "channels_last,fuse_qkv", budget_s=80, minimum_s=40),
        # One static-shape UNet: ready after 126 s on an H100 (docs/benchmarks.md); so one
        # batch size, started twice (empty cache, then the first's), and the figures.
        Setting(
            "compiled",
            "channels_last,fuse_qkv",
            budget_s=230,
            minimum_s=180,
            optimisation="compile",
            max_batch=1,
        ),
        Setting(
            "compile-cudagraphs",
            "channels_last,fuse_qkv",
            budget_s=230,
            minimum_s=180,
            optimisation="compile-cudagraphs",
            max_batch=1,
        ),
    ),
)
DRY = Scale(
    "dry run",
    gpu.SMOKE,
    budget_s=150,
    build_s=20,
    latency_samples=3,
    requests_per_client={1: 2, 4: 2, 8: 2},
    settings=(
        Setting("eager", "", budget_s=60, minimum_s=20),
        Setting("fast", "channels_last,fuse_qkv", budget_s=60, minimum_s=20),
        # Inductor on the CPU compiles C++ for minutes: a dry run shows the budget's skip.
        # CUDA graphs need a GPU: the server refuses them on a CPU, so no row here.
        Setting(
            "compiled",
            "channels_last,fuse_qkv",
            budget_s=300,
            minimum_s=300,
            optimisation="compile",
            max_batch=1,
        ),
    ),
    # One OpenMP thread: on a shared CPU, torch's spinning threads slow to seconds a call
    # once other work takes a core (measured: 64x64 in 1-7 s instead of 0.14 s).
    server_env={"OMP_NUM_THREADS": "1"},
)


@dataclass
class Row:
    setting: str
    speedups: str
    optimisation: str = "none"
    max_batch: int = MAX_BATCH
    ready_s: float | None = None
    #: A compiled setting's second start, on the compile cache its first start left.
    cached_ready_s: float | None = None
    compiled_lines: list[str] = field(default_factory=list)
    warm_up_s: float | None = None
    p50_ms: dict[str, float] = field(default_factory=dict)
    images_per_s: dict[int, float] = field(default_factory=dict)
    mean_batch: dict[int, float] = field(default_factory=dict)
    note: str = ""


class OutOfBudget(Exception):
    """The phase's budget ended before this figure."""


@dataclass
class Phase:
    """A deadline, and what each request may still take before it."""

    deadline: float

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self) -> None:
        if self.left() <= 0:
            raise OutOfBudget("its budget ended")

    def request_timeout(self) -> float:
        self.check()
        return max(1.0, self.left())


def log(message: str) -> None:
    print(f"[{time.monotonic() - STARTED:6.1f} s] {message}", flush=True)


def available(settings: tuple[Setting, ...]) -> list[Setting]:
    """The settings this server build knows (a speed-up or optimisation it lacks is not
    offered)."""
    known = {f.name for f in fields(Speedups)}
    return [
        s
        for s in settings
        if all(p in known for p in s.speedups.split(",") if p) and s.optimisation in OPTIMISATIONS
    ]


def plan(scale: Scale, settings: list[Setting], budget: float) -> str:
    parts = [f"build the model {scale.build_s:.0f} s"]
    parts += [f"{s.name} up to {s.budget_s:.0f} s (needs {s.minimum_s:.0f})" for s in settings]
    return f"budget {budget:.0f} s: " + ", ".join(parts) + "; each within what is left"


# --- one setting --------------------------------------------------------------------------


def body(size: int, seed: int, image_format: str) -> dict[str, Any]:
    parameters = {"height": size, "width": size, "seed": seed, "image_format": image_format}
    return {"inputs": "a photo of a cat", "parameters": parameters}


def server_flags(scale: Scale, setting: Setting, model_dir: Path, scratch: Path) -> list[str]:
    """The setting's tti-server flags; a compiled one keeps its cache in `scratch`."""
    size = str(scale.model.size)
    flags = ["--model", "sdxl-turbo", "--model-path", str(model_dir), "--default-size", size]
    flags += ["--device", scale.model.device, "--max-batch-size", str(setting.max_batch)]
    flags += ["--max-queue", "256", "--grpc-port", "0"]
    # Info: a compiled worker says what it compiled, and how much came from the cache.
    flags += ["--log-level", "info" if setting.compiles else "warning"]
    if setting.speedups:
        flags += ["--sdxl-speedups", setting.speedups]
    if setting.compiles:
        cache = scratch / "compile-cache" / setting.name
        flags += ["--optimisation", setting.optimisation, "--compile-cache-dir", str(cache)]
    return flags


def launch(
    scale: Scale, setting: Setting, flags: list[str], logs: Path, phase: Phase
) -> tuple[ServerProcess, float]:
    """Start the real tti-server with `flags`; it and the seconds until it was ready."""
    flags = [*flags, "--request-timeout", str(max(10, int(phase.left())))]
    started = time.monotonic()
    server = launch_server(
        flags, logs / setting.name, env=scale.server_env, ready_timeout=max(1.0, phase.left())
    )
    return server, time.monotonic() - started


def compiled_lines(server: ServerProcess) -> list[str]:
    return COMPILED_LINE.findall(server.output())


def run_clients(
    server: ServerProcess, scale: Scale, clients: int, each: int, phase: Phase
) -> float:
    """`clients` closed-loop clients sending `each` JPEG requests; the wall time."""
    start_line = threading.Barrier(clients + 1)

    def one_client(index: int) -> None:
        with httpx.Client(base_url=server.url, timeout=phase.request_timeout()) as client:
            start_line.wait()
            for number in range(each):
                request = body(scale.model.size, index * 10_000 + number, "jpeg")
                client.post(PATH, json=request).raise_for_status()

    with ThreadPoolExecutor(clients) as pool:
        done = [pool.submit(one_client, index) for index in range(clients)]
        start_line.wait()
        started = time.perf_counter()
        for future in done:
            future.result()
        return time.perf_counter() - started


def p50_ms(server: ServerProcess, scale: Scale, image_format: str, phase: Phase) -> float:
    times = []
    with httpx.Client(base_url=server.url, timeout=phase.request_timeout()) as client:
        for seed in range(scale.latency_samples + 2):
            started = time.perf_counter()
            request = body(scale.model.size, seed, image_format)
            client.post(PATH, json=request).raise_for_status()
            if seed >= 2:  # the first two warm the connection and the format up
                times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure(server: ServerProcess, scale: Scale, row: Row, phase: Phase) -> None:
    started = time.monotonic()
    for clients in CLIENTS:  # a compiled denoiser compiles here for each new batch size
        run_clients(server, scale, clients, 1, phase)
    row.warm_up_s = time.monotonic() - started
    for image_format in ("png", "jpeg"):
        row.p50_ms[image_format] = p50_ms(server, scale, image_format, phase)
        log(f"  p50 {image_format}: {row.p50_ms[image_format]:.1f} ms")
    for clients in CLIENTS:
        each = scale.requests_per_client[clients]
        images_before, batches_before = gpu.engine_counts(server)
        elapsed = run_clients(server, scale, clients, each, phase)
        images, batches = gpu.engine_counts(server)
        row.images_per_s[clients] = clients * each / elapsed
        row.mean_batch[clients] = (images - images_before) / max(1.0, batches - batches_before)
        log(
            f"  {clients} client(s): {row.images_per_s[clients]:.1f} images/s, "
            f"{row.mean_batch[clients]:.2f} images per call"
        )


def start_twice(
    scale: Scale, setting: Setting, flags: list[str], logs: Path, row: Row, phase: Phase
) -> ServerProcess:
    """A compiled setting: start on an empty compile cache, stop, start again on what the
    first start left; the second server is the one measured."""
    first, row.ready_s = launch(scale, setting, flags, logs, phase)
    row.compiled_lines += compiled_lines(first)
    first.stop()
    log(f"{setting.name}: ready after {row.ready_s:.1f} s (empty compile cache); again")
    second, row.cached_ready_s = launch(scale, setting, flags, logs, phase)
    row.compiled_lines += compiled_lines(second)
    log(f"{setting.name}: ready after {row.cached_ready_s:.1f} s (the first start's cache)")
    for line in row.compiled_lines:
        log(f"  {line}")
    return second


def start_once(
    scale: Scale, setting: Setting, flags: list[str], logs: Path, row: Row, phase: Phase
) -> ServerProcess:
    server, row.ready_s = launch(scale, setting, flags, logs, phase)
    log(f"{setting.name}: ready after {row.ready_s:.1f} s")
    return server


def run_setting(
    scale: Scale, setting: Setting, model_dir: Path, scratch: Path, deadline: float
) -> Row:
    row = Row(setting.name, setting.speedups or "none", setting.optimisation, setting.max_batch)
    left = deadline - time.monotonic()
    if left < setting.minimum_s:
        row.note = f"skipped: {left:.0f} s of the budget left, it needs {setting.minimum_s:.0f}"
        log(f"{setting.name}: {row.note}")
        return row
    phase = Phase(min(deadline, time.monotonic() + setting.budget_s))
    described = f"{row.speedups}, optimisation {row.optimisation}"
    log(f"{setting.name}: starting the server ({described}), {phase.left():.0f} s budget")
    flags = server_flags(scale, setting, model_dir, scratch)
    start = start_twice if setting.compiles else start_once
    try:
        server = start(scale, setting, flags, scratch / "logs", row, phase)
    except (ServerExited, TimeoutError) as exc:
        which = "the second start" if row.ready_s is not None else "it"
        row.note = f"{which} did not start: {str(exc).strip().splitlines()[-1][:120]}"
        log(f"{setting.name}: {row.note}")
        return row
    try:
        measure(server, scale, row, phase)
    except (OutOfBudget, httpx.HTTPError) as exc:
        row.note = f"cut short: {type(exc).__name__}: {str(exc)[:100]}"
        log(f"{setting.name}: {row.note}; the server's last words:\n{server.output()[-2000:]}")
    finally:
        server.stop()
    return row


# --- the table ----------------------------------------------------------------------------


def table(rows: list[Row], scale: Scale, device: str) -> str:
    def cell(value: float | None, width: int, digits: int = 1) -> str:
        return f"{'-' if value is None else f'{value:.{digits}f}':>{width}}"

    size = scale.model.size
    lines = [f"{scale.name}: {device}, {size}x{size}, 1 step"]
    header = f"{'setting':20}{'speed-ups':24}{'max b':>6}{'ready s':>9}{'cached s':>9}"
    header += f"{'warm s':>8}{'p50 png':>9}{'p50 jpeg':>10}"
    header += "".join(f"{f'img/s {c}':>9}" for c in CLIENTS)
    header += "".join(f"{f'batch@{c}':>9}" for c in CLIENTS[1:])
    lines.append(header)
    for r in rows:
        line = f"{r.setting:20}{r.speedups:24}{r.max_batch:>6}{cell(r.ready_s, 9)}"
        line += cell(r.cached_ready_s, 9) + cell(r.warm_up_s, 8)
        line += cell(r.p50_ms.get("png"), 9) + cell(r.p50_ms.get("jpeg"), 10)
        line += "".join(cell(r.images_per_s.get(c), 9) for c in CLIENTS)
        line += "".join(cell(r.mean_batch.get(c), 9, 2) for c in CLIENTS[1:])
        lines.append(line + (f"  ({r.note})" if r.note else ""))
    lines.append(
        "max b: --max-batch-size; ready s: start-up (compiled: on an empty compile cache); "
        "cached s: a compiled setting's second start, on the first start's cache"
    )
    lines.append("p50 in ms through HTTP (caikit JSON); images/s and images per call: JPEG")
    return "\n".join(lines)


def device_name(scale: Scale) -> str:
    import torch

    if scale.model.device == "cuda":
        return f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}"
    return f"CPU, torch {torch.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="the tiny model on the CPU")
    parser.add_argument("--budget-s", type=float, help="the whole run's budget (default: 480)")
    parser.add_argument("--keep", type=Path, help="build the model here and reuse it")
    parser.add_argument(
        "--settings",
        help="comma list of the settings to run (default: all): "
        + ", ".join(s.name for s in FULL.settings),
    )
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    scale = DRY if args.dry_run else FULL
    budget = args.budget_s or scale.budget_s
    if scale.model.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            print("no CUDA device here: nothing to measure (--dry-run runs it on the CPU)")
            return
    deadline = STARTED + budget
    settings = available(scale.settings)
    if args.settings:
        wanted = args.settings.split(",")
        if unknown := [name for name in wanted if name not in {s.name for s in settings}]:
            parser.error(f"--settings: unknown or unavailable {', '.join(unknown)}")
        settings = [s for s in settings if s.name in wanted]
    log(f"{scale.name} on {device_name(scale)}")
    log(plan(scale, settings, budget))

    scratch = Path(tempfile.mkdtemp(prefix="device-run-"))
    rows: list[Row] = []
    try:
        model_dir = args.keep or scratch / "model"
        if not (model_dir / "model_index.json").is_file():
            started = time.monotonic()
            gpu.build_model(scale.model, model_dir)
            log(f"model built in {time.monotonic() - started:.1f} s (budget {scale.build_s:.0f})")
        served = gpu.with_fp16_safe_vae(model_dir, scratch / "fp16-vae")
        for setting in settings:
            rows.append(run_setting(scale, setting, served, scratch, deadline))
            if args.json:
                args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(table(rows, scale, device_name(scale)), flush=True)
    log(f"done in {time.monotonic() - STARTED:.0f} s of {budget:.0f}")


if __name__ == "__main__":
    main()
