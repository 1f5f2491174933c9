"""The app factory with injected backends and loaders: failure isolation through HTTP,
readiness while loading, and a model that fails to load. In-process (ASGI), with
real concurrency from asyncio."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import TypeVar

import httpx
import pytest
from fastapi import FastAPI
from PIL import Image

from tti_contracts.routes import CAIKIT_TEXT_TO_IMAGE as CAIKIT
from tti_server.app import create_app
from tti_server.backends.base import AdapterGone, Backend, BackendOutOfMemory, GenerationRequest
from tti_server.backends.stub import StubBackend
from tti_server.settings import Settings

T = TypeVar("T")


class FailsOnPrompt(StubBackend):
    """The real stub, except that a batch holding prompt `boom` raises, `oom` runs out and
    `gone` finds its adapter removed."""

    def __init__(self) -> None:
        super().__init__()
        self.released = 0

    def generate(self, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
        prompts = {request.prompt for request in batch}
        if "boom" in prompts:
            raise ValueError("the pipeline exploded")
        if "oom" in prompts:
            raise BackendOutOfMemory("CUDA out of memory. Tried to allocate 2.00 GiB")
        if "gone" in prompts:
            raise AdapterGone("adapter 'ink' was removed after this request came")
        return super().generate(batch)

    def release_memory(self) -> None:
        self.released += 1


@asynccontextmanager
async def serving(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            yield client


async def until_ready(client: httpx.AsyncClient) -> None:
    for _ in range(500):
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.01)
    raise TimeoutError("not ready")


def run(app: FastAPI, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    async def main() -> T:
        async with serving(app) as client:
            return await scenario(client)

    return asyncio.run(main())


def ask(client: httpx.AsyncClient, prompt: str, size: int = 8) -> Awaitable[httpx.Response]:
    return client.post(CAIKIT, json={"inputs": prompt, "parameters": {"height": size}})


def test_a_failing_batch_fails_only_its_requests_over_http() -> None:
    backend = FailsOnPrompt()
    app = create_app(Settings(batch_wait_ms=20), backends=[backend])

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        await until_ready(client)
        # Different sizes never share a batch: only the batch holding `boom` fails.
        answers = await asyncio.gather(ask(client, "boom", 8), ask(client, "fine", 16))
        return [*answers, await ask(client, "afterwards")]

    boom, fine, afterwards = run(app, scenario)
    assert boom.status_code == 500
    assert boom.json()["details"] == "generation failed: ValueError: the pipeline exploded"
    assert (fine.status_code, afterwards.status_code) == (200, 200)
    assert backend.released == 1


def test_a_batch_that_batched_with_the_failure_shares_its_fate() -> None:
    backend = FailsOnPrompt()
    app = create_app(Settings(batch_wait_ms=200, max_batch_size=4), backends=[backend])

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        await until_ready(client)
        return list(await asyncio.gather(ask(client, "boom"), ask(client, "neighbour")))

    statuses = [answer.status_code for answer in run(app, scenario)]
    assert statuses == [500, 500]


def test_out_of_memory_is_503_with_retry_after() -> None:
    backend = FailsOnPrompt()
    app = create_app(Settings(), backends=[backend])

    async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        await until_ready(client)
        return await ask(client, "oom"), await ask(client, "fine")

    oom, fine = run(app, scenario)
    assert oom.status_code == 503
    assert oom.headers["retry-after"] == "1"
    assert "out of memory" in oom.json()["details"]
    assert fine.status_code == 200
    assert backend.released == 1


def test_a_request_whose_adapter_was_removed_while_it_waited_is_404() -> None:
    app = create_app(Settings(), backends=[FailsOnPrompt()])

    async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response]:
        await until_ready(client)
        return await ask(client, "gone"), await ask(client, "fine")

    gone, fine = run(app, scenario)
    assert gone.status_code == 404
    assert gone.json()["details"] == "adapter 'ink' was removed after this request came"
    assert fine.status_code == 200


def test_not_ready_while_loading_then_ready() -> None:
    release = threading.Event()

    def slow_loader(settings: Settings) -> Sequence[Backend]:
        assert release.wait(10)
        return [StubBackend()]

    app = create_app(Settings(), loader=slow_loader)

    async def scenario(client: httpx.AsyncClient) -> list[httpx.Response]:
        while_loading = [
            await client.get("/readyz"),
            await client.get("/healthz"),
            await ask(client, "too early"),
            await client.get("/info/models"),
        ]
        release.set()
        await until_ready(client)
        return while_loading

    readyz, healthz, early, info = run(app, scenario)
    assert readyz.status_code == 503
    assert "still loading" in readyz.json()["details"]
    assert healthz.status_code == 200
    assert early.status_code == 503
    assert early.headers["retry-after"] == "1"
    assert info.json()["models"][0]["loaded"] is False


def test_a_model_that_fails_to_load_reports_why() -> None:
    failures: list[str] = []

    def broken_loader(settings: Settings) -> Sequence[Backend]:
        raise FileNotFoundError("no model_index.json in /models/x")

    settings = Settings(model="sdxl-turbo", model_path="/models/x")
    app = create_app(settings, loader=broken_loader, on_load_failure=failures.append)

    async def scenario(client: httpx.AsyncClient) -> httpx.Response:
        for _ in range(500):
            if failures:
                break
            await asyncio.sleep(0.01)
        return await client.get("/readyz")

    readyz = run(app, scenario)
    expected = (
        "model: cannot load sdxl-turbo from /models/x: "
        "FileNotFoundError: no model_index.json in /models/x"
    )
    assert failures == [expected]
    assert readyz.status_code == 503
    assert readyz.json()["details"] == expected


def test_the_ready_hook_runs_once_after_warm_up_before_the_first_request() -> None:
    backend = CountingStub()
    ready_calls: list[int] = []  # how many generate calls the warm-up had made by then

    def ready() -> None:
        ready_calls.append(backend.calls)

    app = create_app(Settings(), backends=[backend], on_ready=ready)

    async def scenario(client: httpx.AsyncClient) -> int:
        await until_ready(client)
        body = {"inputs": "x", "parameters": {"height": 64, "width": 64}}
        return (await client.post(CAIKIT, json=body)).status_code

    assert run(app, scenario) == 200
    assert ready_calls == [1]


def test_a_failing_warm_up_counts_as_a_failed_load() -> None:
    failures: list[str] = []
    ready_calls: list[None] = []
    app = create_app(
        Settings(),
        backends=[FailsOnPromptAlways()],
        on_load_failure=failures.append,
        on_ready=lambda: ready_calls.append(None),
    )

    async def scenario(client: httpx.AsyncClient) -> int:
        for _ in range(500):
            if failures:
                break
            await asyncio.sleep(0.01)
        return (await client.get("/readyz")).status_code

    assert run(app, scenario) == 503
    assert "RuntimeError: warm-up refused" in failures[0]
    assert ready_calls == []


class CountingStub(StubBackend):
    calls = 0

    def generate(self, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
        self.calls += 1
        return super().generate(batch)


class FailsOnPromptAlways(StubBackend):
    def generate(self, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
        raise RuntimeError("warm-up refused")


def test_every_worker_is_warmed_up_and_listed() -> None:
    class Counting(StubBackend):
        calls = 0

        def generate(self, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
            self.calls += 1
            return super().generate(batch)

    backends = [Counting(), Counting()]
    app = create_app(Settings(), backends=backends)

    async def scenario(client: httpx.AsyncClient) -> httpx.Response:
        await until_ready(client)
        return await client.get("/info/models")

    info = run(app, scenario).json()["models"][0]
    assert (info["metadata"]["workers"], info["metadata"]["devices"]) == (2, ["cpu", "cpu"])
    assert [backend.calls for backend in backends] == [1, 1]


def test_backends_and_loader_are_exclusive() -> None:
    with pytest.raises(ValueError, match="not both"):
        create_app(Settings(), backends=[StubBackend()], loader=lambda s: [StubBackend()])


def test_an_unexpected_error_is_a_500_envelope_without_traceback() -> None:
    app = create_app(Settings())

    async def broken() -> None:
        raise KeyError("a real bug")

    app.add_api_route("/broken", broken)

    async def scenario() -> httpx.Response:
        async with app.router.lifespan_context(app):
            # Starlette re-raises after answering (for the server's log); keep the answer.
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
                return await client.get("/broken", headers={"X-Request-Id": "bug-1"})

    answer = asyncio.run(scenario())
    assert answer.status_code == 500
    assert answer.headers["x-request-id"] == "bug-1"
    assert answer.json() == {
        "code": 500,
        "details": "internal server error (request bug-1; see the log)",
        "id": "bug-1",
    }


def test_shutting_down_while_warming_up_stops_the_engine() -> None:
    started, release = threading.Event(), threading.Event()

    class SlowWarmUp(StubBackend):
        def generate(self, batch: list[GenerationRequest]) -> list[list[Image.Image]]:
            started.set()
            release.wait(10)
            return super().generate(batch)

    app = create_app(Settings(), backends=[SlowWarmUp()])

    async def scenario() -> None:
        async with app.router.lifespan_context(app):
            assert await asyncio.to_thread(started.wait, 10)
        # Leaving the lifespan cancelled the warm-up; no worker task may be left behind.
        release.set()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert [t.get_name() for t in others if not t.done()] == []

    asyncio.run(scenario())
    assert app.state.service.engine is None


def test_fastapi_opentelemetry_is_off_unless_asked_for() -> None:
    # No OpenTelemetry SDK is installed here, so only the configuration can be checked.
    signals = ("tracing", "metrics", "logs")
    default = create_app(Settings())._telemetry
    asked = create_app(Settings(opentelemetry=True))._telemetry
    assert [default[signal] for signal in signals] == [False, False, False]
    assert [asked[signal] for signal in signals] == [True, True, True]
