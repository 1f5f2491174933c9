"""The service layer both transports call: the model's life, and one call per task.

HTTP routes and the gRPC servicer only translate: they turn their request into
the same `CaikitTextToImageRequest` / `OpenAIImageRequest`, call `text_to_image`
or `images` here, and map the transport-neutral `failures.ServiceError`s they
get to their own codes. Loading and warm-up live here too, not in either
transport: `start()` begins them in the background, `stop()` ends everything.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from tti_contracts.api import ImageFormat
from tti_server import __version__
from tti_server.backends.base import Backend, BatchKey, GenerationRequest, ModelLoadError
from tti_server.backends.loading import load_backends
from tti_server.encoding import encode_images
from tti_server.engine import Engine
from tti_server.failures import NotReady
from tti_server.generation import caikit_job, openai_job
from tti_server.metrics import ServerMetrics
from tti_server.protocol import CaikitTextToImageRequest, OpenAIImageRequest
from tti_server.settings import Settings

log = logging.getLogger(__name__)

BackendLoader = Callable[[Settings], Sequence[Backend]]
LoadFailureHook = Callable[[str], None]
ReadyHook = Callable[[], None]

#: The warm-up request: small, so it is quick even on CPU.
WARM_UP = GenerationRequest(prompt="warm-up", key=BatchKey(64, 64, 1, 0.0, None), n=1, seed=0)


@dataclass(frozen=True)
class CaptionedImage:
    """caikit's answer: one encoded image and the prompt as its caption."""

    image: bytes
    image_format: ImageFormat
    caption: str
    producer: dict[str, str]


@dataclass(frozen=True)
class Images:
    """The OpenAI answer: `n` encoded images of one size and format."""

    images: list[bytes]
    image_format: ImageFormat
    width: int
    height: int


@dataclass
class Service:
    """Settings, the model's loading, and the engine once the model is loaded and warm."""

    settings: Settings
    loader: BackendLoader = load_backends
    on_load_failure: LoadFailureHook | None = None
    on_ready: ReadyHook | None = None
    engine: Engine | None = None
    load_error: str | None = None
    started: int = field(default_factory=lambda: int(time.time()))
    model_size: int = 0
    metrics: ServerMetrics = field(init=False)
    _loading: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        # One registry for both transports: HTTP and gRPC requests, and the engine.
        self.metrics = ServerMetrics(lambda: self.engine)

    @property
    def model_id(self) -> str:
        return self.settings.served_model_id

    @property
    def producer(self) -> dict[str, str]:
        return {"name": f"tti-server {self.settings.model}", "version": __version__}

    def start(self) -> None:
        """Begin loading and warming up in the background (on the running loop)."""
        self._loading = asyncio.create_task(self._load())

    async def stop(self) -> None:
        """Cancel a load still running, then stop the engine (failing what still waits)."""
        if self._loading is not None:
            self._loading.cancel()
            await asyncio.gather(self._loading, return_exceptions=True)
        if self.engine is not None:
            await self.engine.stop()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    def ready_engine(self) -> Engine:
        """The engine, or `NotReady` while the model is loading (or failed to load)."""
        if self.engine is None:
            raise NotReady(self.load_error or "model: still loading and warming up; retry shortly")
        return self.engine

    async def text_to_image(
        self, body: CaikitTextToImageRequest, model_field: str = "model_id"
    ) -> CaptionedImage:
        """caikit's TextToImageTask, in the format the request asks for (else the default)."""
        engine = self.ready_engine()
        job = caikit_job(body, self.settings, model_field)
        (image,) = await self.generate(engine, job.request, job.image_format)
        return CaptionedImage(image, job.image_format, body.inputs, self.producer)

    async def images(self, body: OpenAIImageRequest) -> Images:
        """OpenAI's image generation: `n` images in one pipeline call."""
        engine = self.ready_engine()
        job = openai_job(body, self.settings)
        images = await self.generate(engine, job.request, job.image_format)
        key = job.request.key
        return Images(images, job.image_format, key.width, key.height)

    async def generate(
        self, engine: Engine, request: GenerationRequest, image_format: ImageFormat
    ) -> list[bytes]:
        """Generate `request.n` images and encode them, neither on the event loop."""
        return await engine.generate_then(
            request, partial(encode_images, image_format=image_format)
        )

    async def _load(self) -> None:
        """Load, start the engine, warm every worker up; only then is the service ready."""
        settings = self.settings
        started = time.perf_counter()
        source = settings.resolved_model_path or "built in"
        log.info("loading model %s (%s)", settings.model, source)
        engine: Engine | None = None
        try:
            backends = await asyncio.to_thread(self.loader, settings)
            engine = Engine(
                backends,
                max_queue=settings.max_queue,
                request_timeout=settings.request_timeout,
                max_batch_size=settings.max_batch_size,
                batch_wait=settings.batch_wait_ms / 1000,
            )
            engine.start()
            loaded = time.perf_counter()
            await engine.run_on_each_worker(WARM_UP)
            self.model_size = await asyncio.to_thread(_directory_size, settings)
        except asyncio.CancelledError:  # shut down while still loading
            if engine is not None:
                await engine.stop()
            raise
        except Exception as exc:
            if engine is not None:
                await engine.stop()
            self.load_error = _load_failure_message(settings, exc)
            log.error("%s", self.load_error)
            log.debug("model load failure", exc_info=exc)
            if self.on_load_failure is not None:
                self.on_load_failure(self.load_error)
            return
        if self.on_ready is not None:
            self.on_ready()
        self.engine = engine
        self._ready.set()
        devices = ", ".join(b.device for b in backends)
        log.info(
            "model %s ready: %d worker(s) on %s, loaded in %.2f s, warmed up in %.2f s",
            settings.served_model_id,
            len(backends),
            devices,
            loaded - started,
            time.perf_counter() - loaded,
        )


def _load_failure_message(settings: Settings, exc: Exception) -> str:
    where = settings.resolved_model_path
    source = f" from {where}" if where else ""
    reason = str(exc) if isinstance(exc, ModelLoadError) else f"{type(exc).__name__}: {exc}"
    return f"model: cannot load {settings.model}{source}: {reason}"


def _directory_size(settings: Settings) -> int:
    """Bytes of the model's files, as caikit's `/info/models` reports (0: none on disk)."""
    path = Path(settings.model_path or "")
    if not settings.model_path or not path.is_dir():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
