"""LoRA adapters without torch: the manifest the operator writes, the table and its state
line, how each API names an adapter, and the adapters applied on a real engine of stub
workers (the stub refuses every adapter)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from pathlib import Path

import pytest

from tti_server.adapters import (
    Adapters,
    AdapterSpec,
    AdapterStatus,
    AdapterTable,
    ManifestError,
    parse_manifest,
    weights_location,
)
from tti_server.backends.base import BatchKey
from tti_server.backends.stub import StubBackend
from tti_server.engine import Engine
from tti_server.failures import NotReady, UnknownModel
from tti_server.generation import caikit_job, openai_job
from tti_server.protocol import CaikitTextToImageRequest, OpenAIImageRequest
from tti_server.service import Service
from tti_server.settings import Settings

SETTINGS = Settings(model="stub", model_id="tiny")
TABLE = AdapterTable(
    {
        "a": AdapterStatus("loaded", 0.8),
        "b": AdapterStatus("loaded", 1.0),
        "bad": AdapterStatus("refused", 1.0, "cannot load x.safetensors: RuntimeError: size"),
        "new": AdapterStatus("loading", 1.0),
    }
)


def manifest(*entries: object) -> str:
    return json.dumps({"adapters": list(entries)})


def test_a_manifest_of_paths_and_hub_files_is_read_in_order() -> None:
    text = manifest(
        {"name": "pixel-art", "scale": 1, "path": "/adapters/x.safetensors"},
        {"name": "other", "scale": 0.8, "repo": "org/r", "file": "x.safetensors",
         "revision": "main"},
    )  # fmt: skip
    assert parse_manifest(text) == [
        AdapterSpec("pixel-art", 1.0, path="/adapters/x.safetensors"),
        AdapterSpec("other", 0.8, repo="org/r", file="x.safetensors", revision="main"),
    ]
    assert parse_manifest('{"adapters": []}') == []


BAD_MANIFESTS = [
    ("{", "not JSON: "),
    ("[]", "adapters: missing"),
    (manifest({"name": "A", "path": "/x"}), "adapters[0].name: 'A' is not a name"),
    (manifest({"name": "a" * 41, "path": "/x"}), "adapters[0].name: "),
    (manifest({"name": "a", "path": "/x", "scale": 5}), "adapters[0].scale: 5 is not"),
    (manifest({"name": "a", "path": "/x", "scale": True}), "adapters[0].scale: True"),
    (manifest({"name": "a"}), "adapters[0]: expected exactly one of path or repo"),
    (manifest({"name": "a", "path": "/x", "repo": "o/r"}), "adapters[0]: expected exactly one"),
    (manifest({"name": "a", "repo": "o/r"}), "adapters[0].file: required with repo"),
    (manifest({"name": "a", "path": "/x", "file": "f"}), "adapters[0].path: file and revision"),
    (manifest({"name": "a", "path": ""}), "adapters[0].path: expected a non-empty string"),
    (manifest({"name": "a", "path": "/x", "colour": 1}), "adapters[0].colour: unknown field"),
    (manifest({"name": "a", "path": "/x"}, {"name": "a", "path": "/y"}),
     "adapters[1].name: 'a' appears twice"),
    (manifest(*({"name": f"a{i}", "path": "/x"} for i in range(17))),
     "adapters: 17 exceed the maximum of 16"),
    (manifest("a"), "adapters[0]: expected an object, got str"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "said"), BAD_MANIFESTS)
def test_a_bad_manifest_names_the_field(text: str, said: str) -> None:
    with pytest.raises(ManifestError) as refused:
        parse_manifest(text)
    assert str(refused.value).startswith(said)


def test_a_path_is_a_safetensors_file_or_a_directory_of_exactly_one(tmp_path: Path) -> None:
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "w.safetensors").write_bytes(b"")
    assert weights_location(str(tmp_path / "one")) == (tmp_path / "one", "w.safetensors")
    assert weights_location(str(tmp_path / "one" / "w.safetensors")) == (
        tmp_path / "one", "w.safetensors"
    )  # fmt: skip
    (tmp_path / "one" / "v.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=r"exactly one \.safetensors file, found 2"):
        weights_location(str(tmp_path / "one"))
    with pytest.raises(ValueError, match="no such file or directory"):
        weights_location(str(tmp_path / "missing"))


def test_the_state_line_is_compact_json_with_reasons_only_for_refusals() -> None:
    assert TABLE.state_line() == (
        'state {"a":{"state":"loaded"},"b":{"state":"loaded"},'
        '"bad":{"state":"refused","reason":"cannot load x.safetensors: RuntimeError: size"},'
        '"new":{"state":"loading"}}'
    )
    assert TABLE.as_json()["a"] == {"state": "loaded", "scale": 0.8}


def openai(model: str | None, **extra: object) -> OpenAIImageRequest:
    return OpenAIImageRequest.model_validate({"prompt": "x", "model": model, **extra})


def caikit(model_id: str | None) -> CaikitTextToImageRequest:
    return CaikitTextToImageRequest.model_validate({"model_id": model_id, "inputs": "x"})


def test_model_slash_adapter_names_an_adapter_at_its_default_scale() -> None:
    key = openai_job(openai("tiny/a"), SETTINGS, TABLE).request.key
    assert (key.adapter, key.adapter_scale) == ("a", 0.8)
    key = caikit_job(caikit("tiny/b"), SETTINGS, "mm-model-id", TABLE).request.key
    assert (key.adapter, key.adapter_scale) == ("b", 1.0)
    for body in (openai("tiny"), openai(None)):
        key = openai_job(body, SETTINGS, TABLE).request.key
        assert (key.adapter, key.adapter_scale) == (None, 1.0)


def test_openai_may_scale_the_adapter_and_only_an_adapter() -> None:
    key = openai_job(openai("tiny/a", adapter_scale=2), SETTINGS, TABLE).request.key
    assert key.adapter_scale == 2.0
    # The base model has nothing to scale: ignored (as partial_images without a stream).
    base = openai_job(openai("tiny", adapter_scale=2), SETTINGS, TABLE).request.key
    assert (base.adapter, base.adapter_scale) == (None, 1.0)
    with pytest.raises(ValueError, match="less than or equal to 4"):
        openai("tiny/a", adapter_scale=4.5)


def test_an_unknown_adapter_lists_those_that_exist() -> None:
    with pytest.raises(UnknownModel) as unknown:
        caikit_job(caikit("tiny/zzz"), SETTINGS, "model_id", TABLE)
    assert str(unknown.value) == (
        "model_id: 'tiny' has no adapter 'zzz'; its adapters: 'tiny/a', 'tiny/b'"
    )
    with pytest.raises(UnknownModel, match="model: 'tiny' has no adapter 'a'; it has no adapters"):
        openai_job(openai("tiny/a"), SETTINGS)
    with pytest.raises(UnknownModel, match="model: model 'other/a' is not served here"):
        openai_job(openai("other/a"), SETTINGS, TABLE)


def test_a_refused_adapter_says_why_and_a_loading_one_is_not_ready() -> None:
    with pytest.raises(UnknownModel, match="model: adapter 'tiny/bad' was refused: cannot load"):
        openai_job(openai("tiny/bad"), SETTINGS, TABLE)
    with pytest.raises(NotReady, match="model: adapter 'tiny/new' is still loading"):
        openai_job(openai("tiny/new"), SETTINGS, TABLE)


def test_only_requests_of_the_same_adapter_and_scale_share_a_batch() -> None:
    plain = BatchKey(64, 64, 1, 0.0, None)
    assert plain == BatchKey(64, 64, 1, 0.0, None, adapter=None, adapter_scale=1.0)
    assert BatchKey(64, 64, 1, 0.0, None, "a") != plain
    assert BatchKey(64, 64, 1, 0.0, None, "a") != BatchKey(64, 64, 1, 0.0, None, "b")
    assert BatchKey(64, 64, 1, 0.0, None, "a", 0.5) != BatchKey(64, 64, 1, 0.0, None, "a")


def test_stub_workers_refuse_every_adapter_and_changes_are_applied(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "w.safetensors").write_bytes(b"")
    path = tmp_path / "adapters.json"

    async def scenario() -> list[AdapterTable]:
        engine = Engine([StubBackend(), StubBackend()], max_queue=4, request_timeout=5)
        engine.start()
        adapters = Adapters(path)
        seen = []
        try:
            path.write_text(manifest({"name": "a", "path": str(tmp_path)},
                                     {"name": "gone", "path": str(tmp_path / "nope")}))  # fmt: skip
            await adapters.poll(engine)
            seen.append(adapters.table)
            path.write_text("{bad")
            await adapters.poll(engine)
            seen.append(adapters.table)
            path.write_text(manifest({"name": "a", "scale": 2, "path": str(tmp_path)}))
            await adapters.poll(engine)
            seen.append(adapters.table)
        finally:
            await engine.stop()
        return seen

    with caplog.at_level(logging.INFO, logger="tti_server.adapters"):
        first, after_bad, rescaled = asyncio.run(scenario())
    assert first.entries["a"] == AdapterStatus("refused", 1.0, "the stub takes no adapters")
    assert (
        first.entries["gone"].reason
        == f"ValueError: {tmp_path / 'nope'}: no such file or directory"
    )
    assert after_bad == first
    assert rescaled.entries == {"a": AdapterStatus("refused", 2.0, "the stub takes no adapters")}
    lines = [r.getMessage() for r in caplog.records if r.name == "tti_server.adapters"]
    assert lines[0] == 'state {"a":{"state":"loading"},"gone":{"state":"loading"}}'
    assert lines[1].startswith('state {"a":{"state":"refused","reason":"the stub takes no')
    assert lines[2] == (
        f"adapters file {path}: not JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1); keeping the previous adapters"
    )
    assert lines[3] == 'state {"a":{"state":"refused","reason":"the stub takes no adapters"}}'
    assert len(lines) == 4


def test_a_compiled_or_fused_model_refuses_every_adapter_and_fetches_none(tmp_path: Path) -> None:
    path = tmp_path / "adapters.json"
    path.write_text(
        manifest({"name": "a", "path": str(tmp_path / "nope")},
                 {"name": "hub", "repo": "org/r", "file": "x.safetensors"})
    )  # fmt: skip
    refusal = Service(Settings(model="sdxl-turbo", optimisation="compile")).adapters.refusal
    assert refusal == "adapters need optimisation none: the compiled graphs are of the base model"
    assert Service(Settings(model="sdxl-turbo")).adapters.refusal is None
    fused = Settings(model="sdxl-turbo", sdxl_speedups="channels_last, fuse-qkv")
    assert Service(fused).adapters.refusal == (
        "adapters need --sdxl-speedups without fuse_qkv: the fused projections bypass the "
        "adapters' to_q, to_k and to_v layers"
    )

    async def scenario() -> AdapterTable:
        engine = Engine([StubBackend()], max_queue=4, request_timeout=5)
        engine.start()
        adapters = Adapters(path, refusal=refusal)
        try:
            await adapters.poll(engine)  # no path is read, no hub asked: nothing fails first
        finally:
            await engine.stop()
        return adapters.table

    table = asyncio.run(scenario())
    assert table.entries == {
        "a": AdapterStatus("refused", 1.0, refusal),
        "hub": AdapterStatus("refused", 1.0, refusal),
    }


def test_a_call_runs_once_on_each_workers_own_thread() -> None:
    async def scenario() -> list[str]:
        engine = Engine([StubBackend(), StubBackend()], max_queue=4, request_timeout=5)
        engine.start()
        try:
            return await engine.call_on_each_worker(lambda backend: threading.current_thread().name)
        finally:
            await engine.stop()

    names = asyncio.run(scenario())
    assert [name.rsplit("_", 1)[0] for name in names] == ["tti-worker-0", "tti-worker-1"]
