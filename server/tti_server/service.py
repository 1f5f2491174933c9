"""The service layer both transports call: the model's life, and one call per task.

HTTP routes and the gRPC servicer only translate: they turn their request into
the same `CaikitTextToImageRequest` / `OpenAIImageRequest`, call `text_to_image`
or `images` here, and map the transport-neutral `failures.ServiceError`s they
get to their own codes. Loading and warm-up live here too, not in either
transport: `start()` begins them in the background, `stop()` ends everything.

A streamed OpenAI request (`image_stream`) is the same engine request with a preview
sink: the worker thread hands each partial image to the request's own queue on the event
loop, and the stream yields them, encoded off the loop, then the final images (encoded as
for any request, so the same bytes as without streaming).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from PIL import Image

from tti_contracts.api import ImageFormat
from tti_server import __version__
from tti_server.adapters import Adapters, refusal_for
from tti_server.backends.base import Backend, BatchKey, GenerationRequest, ModelLoadError
from tti_server.backends.loading import load_backends
from tti_server.encoding import encode_images, encode_preview
from tti_server.engine import Engine
from tti_server.failures import NotReady
from tti_server.generation import Job, caikit_job, openai_job
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


@dataclass(frozen=True)
class PartialImage:
    """A streamed preview: the `partial_index`-th of image `index`, encoded at full size."""

    index: int
    partial_index: int
    image: bytes


@dataclass(frozen=True)
class FinalImage:
    """A streamed request's image `index`, the same bytes as without streaming."""

    index: int
    image: bytes


StreamEvent = PartialImage | FinalImage


@dataclass(frozen=True)
class ImageStream:
    """A streamed OpenAI answer: its images' size and format, and the events as they come."""

    image_format: ImageFormat
    width: int
    height: int
    events: AsyncIterator[StreamEvent]


@dataclass(frozen=True)
class _Preview:
    index: int
    partial_index: int
    image: Image.Image


class PreviewQueue:
    """One streamed request's previews, from the worker thread to its event loop.

    `put` is the request's preview sink; `None` in the queue ends the previews (the
    generation is done). Once `close`d (the client went away) previews are dropped.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.queue: asyncio.Queue[_Preview | None] = asyncio.Queue()
        self.open = True

    def put(self, index: int, partial_index: int, image: Image.Image) -> None:
        if self.open:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens
                preview = _Preview(index, partial_index, image)
                self.loop.call_soon_threadsafe(self.queue.put_nowait, preview)

    def end(self, generation: asyncio.Future[list[bytes]]) -> None:
        """The generation's done callback (on the loop, after every preview it queued)."""
        if not generation.cancelled():
            # The stream reads the outcome unless its client left first: read here, a
            # failure is not logged again as an exception nobody retrieved.
            generation.exception()
        self.queue.put_nowait(None)

    def close(self) -> None:
        self.open = False


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
    adapters: Adapters = field(init=False)
    _loading: asyncio.Task[None] | None = None
    _watching: asyncio.Task[None] | None = None
    _ready: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        # One registry for both transports: HTTP and gRPC requests, and the engine.
        self.metrics = ServerMetrics(lambda: self.engine)
        adapters_file = self.settings.adapters_file
        self.adapters = Adapters(
            Path(adapters_file) if adapters_file else None,
            refusal=refusal_for(self.settings.optimisation, self.settings.sdxl_speedups),
        )

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
        for task in (self._loading, self._watching):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
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
        job = caikit_job(body, self.settings, model_field, self.adapters.table)
        (image,) = await self.generate(engine, job.request, job.image_format)
        return CaptionedImage(image, job.image_format, body.inputs, self.producer)

    async def images(self, body: OpenAIImageRequest) -> Images:
        """OpenAI's image generation: `n` images in one pipeline call."""
        engine = self.ready_engine()
        job = openai_job(body, self.settings, self.adapters.table)
        images = await self.generate(engine, job.request, job.image_format)
        key = job.request.key
        return Images(images, job.image_format, key.width, key.height)

    def image_stream(self, body: OpenAIImageRequest) -> ImageStream:
        """OpenAI's streamed generation. What fails before the stream starts (a bad request,
        not ready, a full queue) raises here; what fails later ends the stream with it."""
        engine = self.ready_engine()
        job = openai_job(body, self.settings, self.adapters.table)
        engine.check_room()
        key = job.request.key
        return ImageStream(job.image_format, key.width, key.height, self._events(engine, job))

    async def _events(self, engine: Engine, job: Job) -> AsyncIterator[StreamEvent]:
        """Previews as the worker makes them, then the final images. The generation starts
        with the stream's first read; when the stream closes early it is withdrawn."""
        previews = PreviewQueue(asyncio.get_running_loop())
        request = job.request
        if request.partial_images:
            request = replace(request, on_preview=previews.put)
        generation = asyncio.ensure_future(self.generate(engine, request, job.image_format))
        generation.add_done_callback(previews.end)
        key = request.key
        try:
            while (preview := await previews.queue.get()) is not None:
                image = await asyncio.to_thread(
                    encode_preview,
                    preview.image,
                    key.width,
                    key.height,
                    job.image_format,
                    self.settings.png_compress_level,
                )
                yield PartialImage(preview.index, preview.partial_index, image)
            for index, image in enumerate(await generation):
                yield FinalImage(index, image)
        finally:
            previews.close()
            generation.cancel()

    async def generate(
        self, engine: Engine, request: GenerationRequest, image_format: ImageFormat
    ) -> list[bytes]:
        """Generate `request.n` images and encode them, neither on the event loop."""
        encode = partial(
            encode_images,
            image_format=image_format,
            png_compress_level=self.settings.png_compress_level,
        )
        return await engine.generate_then(request, encode)

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
            # Ready with the manifest's adapters already loaded (a bad one: none).
            await self.adapters.poll_safely(engine)
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
        if self.adapters.path is not None:
            self._watching = asyncio.create_task(self.adapters.watch(engine))
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
