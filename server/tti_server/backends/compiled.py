"""Compilation ahead of serving (`--optimisation compile|compile-cudagraphs`), cached.

While the model loads, `compile_ahead` wraps the denoiser's forward and `vae.decode` in
`torch.compile` with static shapes and runs the pipeline once per batch size up to the
server's largest, at its default size and the model's default steps and guidance, so
every graph a batch of that shape needs is compiled before the server is ready. After
that warm-up each wrapper (`ShapeDispatch`) runs the compiled function only for the call
shapes it saw, and the eager module for any other (another size, a guidance that doubles
the batch): no request ever waits for a compile.

What was compiled is kept under `--compile-cache-dir`, one directory per `cache_key` (torch
version, device, dtype, optimisation, batch sizes and size: what invalidates it), holding
Inductor's and Triton's cache directories and torch's cache-artefact blob (`artifacts.bin`).
Both, because on the CPU the blob alone holds the C++ kernels only as source: a second start
that loaded only the blob still spent half the first's time building them (measured in
docs/benchmarks.md), while Inductor's directory keeps the built kernels.

One log line per worker says what it did; tests and docs read its exact shape:
`compiled unet and vae.decode for batch sizes 1-4 at 512x512 in 93.2 s (from the cache:
3 of 8 graphs) into /compile-cache/<key>`.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_map_only

from tti_contracts.api import GPU_ONLY_OPTIMISATIONS, Optimisation
from tti_server.backends.base import BatchKey, GenerationRequest, ModelLoadError
from tti_server.backends.diffusion import DiffusionBackend, one_line

log = logging.getLogger(__name__)

ARTIFACTS = "artifacts.bin"
_WARM_UP_PROMPT = "a lighthouse on a cliff at dusk"


def needs_cuda_line(optimisation: str) -> str:
    return f"--optimisation {optimisation} needs a CUDA device and this pod has none; use compile"


def check_devices(optimisation: Optimisation, devices: list[str]) -> None:
    """Refuse a GPU-only optimisation for CPU workers, before any weights are read."""
    if optimisation in GPU_ONLY_OPTIMISATIONS and not all(d.startswith("cuda") for d in devices):
        raise ModelLoadError(needs_cuda_line(optimisation))


def raise_recompile_limit(entries: int) -> None:
    """Let dynamo keep `entries` compiled variants of one function (one per batch size and
    worker) rather than fall back to eager at its default limit of 8."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, entries)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * entries)


# --- the cache's key ---------------------------------------------------------------------


def cache_key(
    torch_version: str,
    device: str,
    dtype: str,
    optimisation: str,
    max_batch_size: int,
    height: int,
    width: int,
) -> str:
    """The cache directory's name: `torch-2.15.0+cpu.cpu.float32.compile.b1-4.512x512`."""
    return (
        f"torch-{torch_version}.{device}.{dtype}.{optimisation}"
        f".b1-{max_batch_size}.{height}x{width}"
    )


def device_slug(name: str, capability: tuple[int, int]) -> str:
    """A GPU as the key names it: `NVIDIA H100 80GB HBM3`, (9, 0): `nvidia-h100-80gb-hbm3-sm90`."""
    words = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{words}-sm{capability[0]}{capability[1]}"


def device_part(device: str) -> str:
    """The key's device part: `cpu`, or the GPU's name and compute capability."""
    if not device.startswith("cuda"):
        return "cpu"
    return device_slug(torch.cuda.get_device_name(device), torch.cuda.get_device_capability(device))


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# --- compiled for the shapes seen, eager for any other ------------------------------------


def call_signature(args: tuple[Any, ...], kwargs: dict[str, Any]) -> Hashable:
    """What a static-shape graph is specialised on: each tensor's shape, dtype, device and
    strides, every plain value, and whether autograd records (dynamo guards on each)."""
    modes = (torch.is_grad_enabled(), torch.is_inference_mode_enabled())
    return (modes, _describe(args), _describe(kwargs))


def _describe(value: object) -> Hashable:
    if isinstance(value, torch.Tensor):
        return ("tensor", tuple(value.shape), value.dtype, value.device, value.stride())
    if isinstance(value, list | tuple):
        return tuple(_describe(item) for item in value)
    if isinstance(value, dict):
        return tuple((str(key), _describe(item)) for key, item in sorted(value.items(), key=str))
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return type(value).__qualname__


class ShapeDispatch:
    """Stands in for a module's method: while learning (the warm-up) every call runs the
    compiled function and its signature is remembered; once sealed, only calls of a
    remembered signature do, and any other runs the eager method, which never compiles.

    With CUDA graphs each compiled call starts a new step (the graphs' memory of the last
    call may be reused: one denoising step does not outlive the next) and its tensors are
    cloned: the next replay overwrites the graph's output buffers, while the pipeline may
    still hold the last output (a multistep scheduler keeps earlier steps' predictions).
    """

    def __init__(
        self,
        eager: Callable[..., Any],
        compiled: Callable[..., Any],
        *,
        cudagraphs: bool = False,
    ) -> None:
        functools.update_wrapper(self, eager)  # inspect.signature sees the eager method's
        self.eager = eager
        self.compiled = compiled
        self.cudagraphs = cudagraphs
        self.learning = True
        self.seen: set[Hashable] = set()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        signature = call_signature(args, kwargs)
        if self.learning:
            self.seen.add(signature)
        elif signature not in self.seen:
            return self.eager(*args, **kwargs)
        if not self.cudagraphs:
            return self.compiled(*args, **kwargs)
        torch.compiler.cudagraph_mark_step_begin()  # type: ignore[no-untyped-call]
        return tree_map_only(torch.Tensor, torch.clone, self.compiled(*args, **kwargs))

    def seal(self) -> None:
        self.learning = False


def wrap_method(owner: Any, name: str, optimisation: Optimisation) -> ShapeDispatch:
    """Replace `owner.name` (a bound method) by a `ShapeDispatch` of it, compiled with
    static shapes; the instance attribute wins over the class's method."""
    eager = getattr(owner, name)
    cudagraphs = optimisation == "compile-cudagraphs"
    mode = "reduce-overhead" if cudagraphs else None
    compiled = torch.compile(eager, dynamic=False, mode=mode)
    dispatch = ShapeDispatch(eager, compiled, cudagraphs=cudagraphs)
    setattr(owner, name, dispatch)
    return dispatch


# --- compiling ahead ----------------------------------------------------------------------


@dataclass(frozen=True)
class CompilePlan:
    """What to compile for: the server's settings that fix the graphs' shapes."""

    optimisation: Optimisation
    cache_root: Path
    max_batch_size: int
    size: int
    steps: int
    guidance: float


@dataclass(frozen=True)
class CompileReport:
    denoiser: str
    seconds: float
    cache_hits: int
    graphs: int
    directory: Path

    def line(self, plan: CompilePlan) -> str:
        return (
            f"compiled {self.denoiser} and vae.decode for batch sizes 1-{plan.max_batch_size} "
            f"at {plan.size}x{plan.size} in {self.seconds:.1f} s (from the cache: "
            f"{self.cache_hits} of {self.graphs} graphs) into {self.directory}"
        )


def denoiser_name(pipeline: Any) -> str:
    return "unet" if hasattr(pipeline, "unet") else "transformer"


def key_for(backend: DiffusionBackend, plan: CompilePlan) -> str:
    denoiser = getattr(backend.pipeline, denoiser_name(backend.pipeline))
    return cache_key(
        torch.__version__,
        device_part(backend.device),
        dtype_name(denoiser.dtype),
        plan.optimisation,
        plan.max_batch_size,
        plan.size,
        plan.size,
    )


def compile_ahead(backend: DiffusionBackend, plan: CompilePlan) -> CompileReport:
    """Compile `backend`'s denoiser and VAE decoder for batch sizes 1..max, from the cache
    where it has them, save what it compiled, and log one line. Raises `ModelLoadError`."""
    started = time.perf_counter()
    directory = plan.cache_root / key_for(backend, plan)
    use_cache_directory(directory)
    load_artifacts(directory / ARTIFACTS)
    hits_before, misses_before = fx_graph_cache_counts()
    pipeline = backend.pipeline
    name = denoiser_name(pipeline)
    dispatches = [
        wrap_method(getattr(pipeline, name), "forward", plan.optimisation),
        wrap_method(pipeline.vae, "decode", plan.optimisation),
    ]
    for batch_size in range(1, plan.max_batch_size + 1):
        try:
            backend.generate([warm_up_request(plan, batch_size)])
        except Exception as exc:  # Inductor's errors run to pages: the operator shows one line
            raise ModelLoadError(
                f"--optimisation {plan.optimisation}: compiling for batch size {batch_size} "
                f"failed: {one_line(exc)}"
            ) from exc
    for dispatch in dispatches:
        dispatch.seal()
    hits, misses = fx_graph_cache_counts()
    save_artifacts(directory / ARTIFACTS)
    report = CompileReport(
        denoiser=name,
        seconds=time.perf_counter() - started,
        cache_hits=hits - hits_before,
        graphs=hits - hits_before + misses - misses_before,
        directory=directory,
    )
    log.info("%s", report.line(plan))
    return report


def warm_up_request(plan: CompilePlan, batch_size: int) -> GenerationRequest:
    key = BatchKey(plan.size, plan.size, plan.steps, plan.guidance, None)
    return GenerationRequest(_WARM_UP_PROMPT, key, n=batch_size, seed=0)


def use_cache_directory(directory: Path) -> None:
    """Point Inductor's and Triton's caches (read on each use) into `directory`."""
    try:
        for part in ("inductor", "triton"):
            (directory / part).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelLoadError(f"--compile-cache-dir: cannot create {directory}: {exc}") from None
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory / "inductor")
    os.environ["TRITON_CACHE_DIR"] = str(directory / "triton")


def load_artifacts(path: Path) -> None:
    """Hot-load a blob another start saved; a missing or unreadable one only means compiling."""
    if not path.is_file():
        return
    try:
        torch.compiler.load_cache_artifacts(path.read_bytes())
    except Exception as exc:  # a bad blob must not stop the pod: this start rewrites it
        log.warning("cannot load %s (%s); compiling without it", path, exc)


def save_artifacts(path: Path) -> None:
    """Write this process's cache artefacts atomically: another pod may be reading the file,
    or writing the same key at once (each then renames a whole file over it)."""
    saved = torch.compiler.save_cache_artifacts()
    if saved is None:
        return
    try:
        write_atomically(path, saved[0])
    except OSError as exc:  # the compiled graphs serve anyway; the next start compiles
        log.warning("cannot save %s: %s", path, exc)


def write_atomically(path: Path, data: bytes) -> None:
    """A temporary file next to `path`, renamed over it: readers see old or new, whole."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def fx_graph_cache_counts() -> tuple[int, int]:
    """Inductor's FX-graph cache hits and misses so far in this process."""
    inductor = torch._dynamo.utils.counters["inductor"]
    return inductor["fxgraph_cache_hit"], inductor["fxgraph_cache_miss"]
