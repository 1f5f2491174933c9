"""The server's one settings object: command-line flags over `TTI_*` variables over defaults."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from tti_contracts.api import ImageFormat, Optimisation
from tti_contracts.catalogue import CATALOGUE, ModelEntry, ModelName, entry, request_rules
from tti_http.settings import ClientLimitSettings
from tti_server.encoding import DEFAULT_PNG_COMPRESS_LEVEL

DeviceChoice = Literal["auto", "cpu", "cuda"]


def normalise_format(value: object) -> object:
    """Image formats are case-insensitive and `jpg` means `jpeg`, as PIL has it."""
    if isinstance(value, str):
        lowered = value.strip().lower()
        return "jpeg" if lowered == "jpg" else lowered
    return value


class Settings(ClientLimitSettings):
    """Everything an operator can set: `max_queue` is flag `--max-queue` and `TTI_MAX_QUEUE`."""

    model_config = SettingsConfigDict(env_prefix="TTI_", extra="forbid", validate_default=True)

    model: ModelName = Field(default="stub", description="which model to serve")
    model_path: str | None = Field(
        default=None,
        description="model directory or Hugging Face repo id (default: the model's repo, "
        f"{CATALOGUE['sdxl-turbo'].default_repo} for sdxl-turbo)",
    )
    model_id: str | None = Field(
        default=None,
        description="the model name clients address (model_id / model); default: --model",
    )
    image_format: ImageFormat = Field(default="png", description="format when a request names none")
    png_compress_level: int = Field(
        default=DEFAULT_PNG_COMPRESS_LEVEL,
        ge=0,
        le=9,
        description="zlib level of PNG answers, 0 (stored) to 9; 1, the fastest that "
        "compresses, measured in docs/benchmarks.md",
    )
    host: str = Field(default="0.0.0.0", description="address to listen on")
    port: int = Field(default=8080, ge=0, le=65535, description="HTTP port to listen on")
    grpc_port: int = Field(
        default=8085,
        ge=0,
        le=65535,
        description="gRPC port (caikit's ComputerVisionService, health, reflection); 0: no gRPC",
    )
    max_queue: int = Field(
        default=64, ge=1, description="requests waiting for a worker before new ones get 503"
    )
    request_timeout: float = Field(
        default=60.0, gt=0, description="seconds a request may wait and run before it gets 504"
    )
    device: DeviceChoice = Field(
        default="auto",
        description="auto: every visible CUDA device, else CPU; cpu or cuda to insist",
    )
    workers: int = Field(
        default=1,
        ge=1,
        le=64,
        description="CPU workers (on CUDA: one worker per visible device instead)",
    )
    max_batch_size: int = Field(
        default=4,
        ge=1,
        le=64,
        description="most images one pipeline call may hold; 1 turns batching off",
    )
    batch_wait_ms: float = Field(
        default=2.0,
        ge=0,
        le=1000,
        description="how long a worker waits for compatible requests to batch",
    )
    max_side: int | None = Field(
        default=None,
        ge=8,
        description="largest height or width accepted, in pixels (default, and at most: the "
        "model's)",
    )
    max_steps: int | None = Field(
        default=None,
        ge=1,
        description="largest num_steps accepted (default, and at most: the model's)",
    )
    max_prompt_length: int = Field(
        default=2000,
        ge=1,
        description="longest prompt (and negative prompt) accepted, in characters",
    )
    default_size: int | None = Field(
        default=None,
        ge=8,
        description="height and width when a request names none (default: the model's)",
    )
    sdxl_speedups: str = Field(
        default="",
        description="diffusers models on CUDA: comma-separated speed-ups: channels_last, "
        "fuse_qkv (compiling is --optimisation)",
    )
    optimisation: Optimisation = Field(
        default="none",
        description="compile: the denoiser and the VAE decoder compiled for batch sizes "
        "1..--max-batch-size at --default-size before the server is ready (other shapes run "
        "uncompiled); compile-cudagraphs: also in CUDA graphs (CUDA only); adapters need none",
    )
    compile_cache_dir: str | None = Field(
        default=None,
        description="where compiled graphs are kept between starts, one directory per torch "
        "version, device, dtype, optimisation and shapes (default: $XDG_CACHE_HOME/tti/compile, "
        "else ~/.cache/tti/compile)",
    )
    adapters_file: str | None = Field(
        default=None,
        description="the LoRA adapters manifest (JSON, written by the operator), watched for "
        "changes; none: no adapters",
    )
    stub_latency_ms: float = Field(
        default=0.0,
        ge=0,
        description="stub only: pretend each batch takes this long (tests, demos)",
    )
    opentelemetry: bool = Field(
        default=False,
        description="FastAPI's native OpenTelemetry spans and metrics, for an OpenTelemetry "
        "SDK set up in the process (off: /metrics serves Prometheus, and even unused the "
        "feature costs a check on every request)",
    )
    playground: bool = Field(
        default=True,
        description="serve the playground page at / (false: / answers 404, for locked-down "
        "deployments)",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field(
        default="info", description="log level"
    )

    @field_validator("image_format", mode="before")
    @classmethod
    def _format_any_case(cls, value: object) -> object:
        return normalise_format(value)

    @property
    def served_model_id(self) -> str:
        return self.model_id or self.model

    @property
    def catalogue_entry(self) -> ModelEntry:
        return entry(self.model)

    @property
    def largest_side(self) -> int:
        """The model's largest side, or the server's if that is smaller."""
        return min(self.max_side or self.catalogue_entry.max_side, self.catalogue_entry.max_side)

    @property
    def most_steps(self) -> int:
        return min(self.max_steps or self.catalogue_entry.max_steps, self.catalogue_entry.max_steps)

    @property
    def side_when_unnamed(self) -> int:
        return self.default_size or self.catalogue_entry.default_size

    @property
    def request_rules(self) -> dict[str, object]:
        """The model's rules with this server's limits applied."""
        return {
            **request_rules(self.catalogue_entry),
            "max_steps": self.most_steps,
            "max_side": self.largest_side,
            "default_size": self.side_when_unnamed,
        }

    @property
    def resolved_model_path(self) -> str:
        return self.model_path or self.catalogue_entry.default_repo or ""

    @property
    def resolved_compile_cache_dir(self) -> Path:
        if self.compile_cache_dir:
            return Path(self.compile_cache_dir).expanduser()
        cache_home = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(cache_home) / "tti" / "compile"
