"""The endpoint table alone: least-busy choice, holding, waking once, the cap, the timeout."""

from __future__ import annotations

import asyncio
import time

import pytest

from tti_gateway.endpoints import (
    AmbiguousModel,
    EndpointTable,
    HoldPolicy,
    Model,
    ModelState,
    NotReadyInTime,
    ScaledDownByHand,
    UnknownModel,
)


def table(timeout: float = 5.0, max_held: int = 10) -> tuple[EndpointTable, list[str]]:
    woken: list[str] = []

    async def waker(model: Model) -> None:
        woken.append(model.label)

    return EndpointTable(HoldPolicy(timeout, max_held, retry_after=3), waker), woken


def deadline(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def test_least_busy_ready_endpoint_is_chosen() -> None:
    async def run() -> None:
        t, _ = table()
        t.set_model(("", "m"), ["a", "b", "c"])
        for url in ("a", "b", "c"):
            t.set_ready(("", "m"), url, url != "c")
        m = t.resolve("m").model
        async with t.acquire(m, deadline()) as first, t.acquire(m, deadline()) as second:
            assert {first.url, second.url} == {"a", "b"}  # never the unready c
            async with t.acquire(t.resolve("m").model, deadline()) as third:
                assert third.url in {"a", "b"} and third.in_flight == 2
        assert all(e.in_flight == 0 for e in t.models[("", "m")].endpoints.values())

    asyncio.run(run())


def test_unknown_model_names_the_known_ones() -> None:
    async def run() -> None:
        t, _ = table()
        t.set_model(("", "beta"), [])
        t.set_model(("", "alpha"), ["a"])
        with pytest.raises(
            UnknownModel, match="'gamma' is not served here; known models: alpha, beta"
        ):
            async with t.acquire(t.resolve("gamma").model, deadline()):
                pass

    asyncio.run(run())


def test_a_burst_at_zero_is_held_and_wakes_the_model_once() -> None:
    async def run() -> None:
        t, woken = table()
        t.set_model(("", "m"), [])
        assert t.models[("", "m")].state is ModelState.SCALED_TO_ZERO

        async def one() -> str:
            async with t.acquire(t.resolve("m").model, deadline()) as endpoint:
                return endpoint.url

        burst = [asyncio.create_task(one()) for _ in range(5)]
        await asyncio.sleep(0.05)
        assert t.models[("", "m")].held == 5 and woken == ["m"]
        assert t.models[("", "m")].state is ModelState.STARTING
        t.set_model(("", "m"), ["pod"])  # the operator scaled it up; not ready yet
        await asyncio.sleep(0.05)
        assert not any(task.done() for task in burst)
        t.set_ready(("", "m"), "pod", True)
        assert await asyncio.gather(*burst) == ["pod"] * 5
        assert t.models[("", "m")].held == 0 and woken == ["m"]

    asyncio.run(run())


def test_held_requests_time_out_with_retry_after() -> None:
    async def run() -> None:
        t, _ = table(timeout=0.1)
        t.set_model(("", "m"), [])
        with pytest.raises(NotReadyInTime, match=r"no pod became ready within 0\.1 s") as info:
            async with t.acquire(t.resolve("m").model, deadline(0.1)):
                pass
        assert info.value.status == 503 and info.value.headers == {"Retry-After": "3"}
        assert t.models[("", "m")].held == 0

    asyncio.run(run())


def test_held_requests_are_capped() -> None:
    async def run() -> None:
        t, _ = table(max_held=2)
        t.set_model(("", "m"), [])

        async def hold() -> None:
            async with t.acquire(t.resolve("m").model, deadline(0.3)):
                pass

        held = [asyncio.create_task(hold()) for _ in range(2)]
        await asyncio.sleep(0.02)
        with pytest.raises(NotReadyInTime, match="2 requests are already waiting"):
            await hold()
        for task in held:
            with pytest.raises(NotReadyInTime):
                await task

    asyncio.run(run())


def test_new_endpoint_sets_keep_the_counts_of_known_endpoints() -> None:
    async def run() -> None:
        t, _ = table()
        t.set_model(("", "m"), ["a"])
        t.set_ready(("", "m"), "a", True)
        async with t.acquire(t.resolve("m").model, deadline()) as endpoint:
            t.set_model(("", "m"), ["a", "b"])
            assert t.models[("", "m")].endpoints["a"] is endpoint and endpoint.in_flight == 1
            assert not t.models[("", "m")].endpoints["b"].ready

    asyncio.run(run())


def test_excluded_endpoints_are_not_chosen() -> None:
    async def run() -> None:
        t, _ = table()
        t.set_model(("", "m"), ["a", "b"])
        t.set_ready(("", "m"), "a", True)
        t.set_ready(("", "m"), "b", True)
        for _ in range(4):
            async with t.acquire(t.resolve("m").model, deadline(), exclude=["a"]) as endpoint:
                assert endpoint.url == "b"

    asyncio.run(run())


def test_a_bare_name_in_two_namespaces_is_ambiguous_and_namespace_name_is_not() -> None:
    t, _ = table()
    t.set_model(("a", "m"), [])
    t.set_model(("b", "m"), [])
    t.set_model(("b", "solo"), [])
    with pytest.raises(AmbiguousModel, match=r"'m' is ambiguous \(a/m and b/m\); name one as NA"):
        t.resolve("m")
    assert t.resolve("b/m").model.key == ("b", "m")
    assert t.resolve("solo").model.key == ("b", "solo")
    with pytest.raises(UnknownModel, match="'c/m' is not served here; known models: a/m, b/m"):
        t.resolve("c/m")


def test_a_model_scaled_to_zero_by_hand_is_refused_at_once_and_not_woken() -> None:
    async def run() -> None:
        t, woken = table()
        t.set_scale(("ns", "m"), replicas=0, autoscaling=False)
        with pytest.raises(ScaledDownByHand, match=r"spec\.replicas: 0\) and has no spec\.autos"):
            async with t.acquire(t.resolve("m").model, deadline()):
                pass
        assert woken == [] and t.models[("ns", "m")].held == 0

    asyncio.run(run())


def test_a_starting_model_is_waited_for_not_woken_and_zero_again_opens_a_new_cold_period() -> None:
    async def run() -> None:
        t, woken = table(timeout=0.05)
        t.set_scale(("ns", "m"), replicas=1, autoscaling=True)
        with pytest.raises(NotReadyInTime):
            async with t.acquire(t.resolve("m").model, deadline(0.05)):
                pass
        assert woken == []  # replicas were asked for already
        t.set_scale(("ns", "m"), replicas=0, autoscaling=True)
        for _ in range(2):
            with pytest.raises(NotReadyInTime):
                async with t.acquire(t.resolve("m").model, deadline(0.05)):
                    pass
        assert woken == ["ns/m"]  # once for the cold period, however many requests
        t.set_scale(("ns", "m"), replicas=1, autoscaling=True)
        t.set_scale(("ns", "m"), replicas=0, autoscaling=True)
        with pytest.raises(NotReadyInTime):
            async with t.acquire(t.resolve("m").model, deadline(0.05)):
                pass
        assert woken == ["ns/m", "ns/m"]

    asyncio.run(run())


# -- adapters: MODEL/ADAPTER beside NAMESPACE/NAME --------------------------------------


def with_adapters(t: EndpointTable, key: tuple[str, str], *adapters: str) -> None:
    t.set_model(key, [])
    t.set_scale(key, replicas=1, autoscaling=False, adapters=adapters)


def test_an_adapter_is_named_model_slash_adapter_and_goes_to_its_model() -> None:
    t, _ = table()
    with_adapters(t, ("ns", "sdxl"), "pixel", "ink")
    target = t.resolve("sdxl/pixel")
    assert (target.model.key, target.adapter) == (("ns", "sdxl"), "pixel")
    assert target.upstream_name == "sdxl/pixel"  # what the pod is asked for
    full = t.resolve("ns/sdxl/ink")
    assert (full.model.key, full.adapter, full.upstream_name) == (("ns", "sdxl"), "ink", "sdxl/ink")
    plain = t.resolve("ns/sdxl")  # NAMESPACE/NAME still means the model itself
    assert (plain.adapter, plain.upstream_name) == (None, "sdxl")


def test_an_unknown_adapter_lists_the_adapters_its_model_has() -> None:
    t, _ = table()
    with_adapters(t, ("ns", "sdxl"), "pixel", "ink")
    with_adapters(t, ("ns", "plain"))
    with pytest.raises(UnknownModel, match=r"'sdxl/oil': ns/sdxl has no adapter 'oil'; its "
                       r"adapters: pixel, ink"):  # fmt: skip
        t.resolve("sdxl/oil")
    with pytest.raises(UnknownModel, match="ns/plain has no adapter 'x'; its adapters: none"):
        t.resolve("ns/plain/x")
    for nonsense in ("a/b/c/d", "sdxl/", "/sdxl", ""):
        with pytest.raises(UnknownModel, match="is not served here"):
            t.resolve(nonsense)


def test_a_name_that_reads_as_both_a_model_and_an_adapter_is_ambiguous() -> None:
    t, _ = table()
    with_adapters(t, ("team", "sdxl"), "pixel")
    with_adapters(t, ("sdxl", "pixel"))  # a namespace named like the model
    with pytest.raises(AmbiguousModel, match=r"\(sdxl/pixel and team/sdxl/pixel\); name one "
                       r"as NAMESPACE/NAME/ADAPTER"):  # fmt: skip
        t.resolve("sdxl/pixel")
    assert t.resolve("team/sdxl/pixel").adapter == "pixel"


def test_adapters_follow_the_spec() -> None:
    t, _ = table()
    with_adapters(t, ("ns", "sdxl"), "pixel")
    with_adapters(t, ("ns", "sdxl"))  # removed from spec.adapters
    with pytest.raises(UnknownModel, match="its adapters: none"):
        t.resolve("sdxl/pixel")
