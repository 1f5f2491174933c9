"""LoRA adapters: the manifest the operator writes, and the table of what each adapter is now.

The operator mounts a JSON manifest (`--adapters-file`; LORA.md in the repository):

    {"adapters": [{"name": "pixel-art", "scale": 1.0, "path": "/adapters/.../x.safetensors"},
                  {"name": "other", "scale": 0.8, "repo": "org/r", "file": "x.safetensors",
                   "revision": "main"}]}

`parse_manifest` reads it, raising `ManifestError` naming the field at fault. The service
owns one `Adapters`: its `table` (each adapter's state, default scale and refusal reason,
replaced whole on every change) is what the request checks read; it polls the manifest
every `POLL_S` seconds and, when its content changed, applies the difference on every
worker's own thread between batches (delete removed or changed adapters, load new ones;
a new scale only changes the table: each batch's key carries its scale). A bad manifest
is logged as one line and the adapters stay as they were. Every change of states is logged
as one line, `state {...}`, by logger `tti_server.adapters`: the operator reads the last one.
A compiled model (`--optimisation` other than none) refuses every adapter, fetching nothing:
its graphs were compiled for the base model's weights.

Nothing here touches torch: loading is the backends' (`backends/adapters.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from tti_server.backends.base import AdapterFile, Backend, Speedups, TakesAdapters

if TYPE_CHECKING:
    from tti_server.engine import Engine

log = logging.getLogger("tti_server.adapters")

AdapterState = Literal["loading", "loaded", "refused"]
MAX_ADAPTERS = 16
POLL_S = 2.0
MAX_SCALE = 4.0
_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_NAME_LENGTH = 40
_KNOWN_FIELDS = {"name", "scale", "path", "repo", "file", "revision"}


#: Every adapter's reason when the model is compiled (`--optimisation` other than none).
NEEDS_NO_OPTIMISATION = "adapters need optimisation none: the compiled graphs are of the base model"


#: Every adapter's reason when the attention projections are fused (`--sdxl-speedups fuse_qkv`).
NEEDS_UNFUSED = (
    "adapters need --sdxl-speedups without fuse_qkv: the fused projections bypass the "
    "adapters' to_q, to_k and to_v layers"
)


def refusal_for(optimisation: str, speedups: str) -> str | None:
    """Why a server refuses every adapter, if it does. Compiled graphs are of the base
    model's weights, which an adapter changes under them; fused q, k and v projections
    leave the LoRA layers diffusers puts on the separate ones unused (measured: most of an
    adapter's effect was lost, silently)."""
    if optimisation != "none":
        return NEEDS_NO_OPTIMISATION
    try:
        fused = Speedups.parse(speedups).fuse_qkv
    except ValueError:  # the model's load refuses it, naming the flag
        fused = False
    return NEEDS_UNFUSED if fused else None


class ManifestError(ValueError):
    """The manifest is not what the operator writes; the message names the field."""


@dataclass(frozen=True)
class AdapterSpec:
    """One manifest entry: a local `path`, or a hub `repo` + `file` at `revision`."""

    name: str
    scale: float = 1.0
    path: str | None = None
    repo: str | None = None
    file: str | None = None
    revision: str | None = None

    @property
    def source(self) -> tuple[str | None, ...]:
        """What the weights are: a change of it means loading them again (not the scale)."""
        return (self.path, self.repo, self.file, self.revision)


@dataclass(frozen=True)
class AdapterStatus:
    state: AdapterState
    scale: float
    reason: str | None = None

    def as_json(self) -> dict[str, object]:
        entry: dict[str, object] = {"state": self.state, "scale": self.scale}
        if self.reason is not None:
            entry["reason"] = self.reason
        return entry


@dataclass(frozen=True)
class AdapterTable:
    """Every adapter of the manifest by name, as it is now. Immutable: replaced whole."""

    entries: Mapping[str, AdapterStatus] = field(default_factory=dict)

    def loaded(self) -> list[str]:
        return [name for name, status in self.entries.items() if status.state == "loaded"]

    def as_json(self) -> dict[str, dict[str, object]]:
        """`/info/models`'s `adapters`: {name: {state, scale, reason?}}."""
        return {name: status.as_json() for name, status in self.entries.items()}

    def state_line(self) -> str:
        """The log line the operator reads: `state {"name":{"state":...,"reason"?:...}}`."""
        states: dict[str, dict[str, str]] = {}
        for name, status in self.entries.items():
            states[name] = {"state": status.state}
            if status.reason is not None:
                states[name]["reason"] = status.reason
        return "state " + json.dumps(states, separators=(",", ":"))

    def with_states(self, changes: Mapping[str, AdapterStatus]) -> AdapterTable:
        return AdapterTable({**self.entries, **changes})


NO_ADAPTERS = AdapterTable()


def parse_manifest(text: str) -> list[AdapterSpec]:
    """The manifest's adapters, in order; `ManifestError` naming the first bad field."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ManifestError(f"not JSON: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("adapters"), list):
        raise ManifestError('adapters: missing; expected {"adapters": [...]}')
    entries: list[Any] = document["adapters"]
    if len(entries) > MAX_ADAPTERS:
        raise ManifestError(f"adapters: {len(entries)} exceed the maximum of {MAX_ADAPTERS}")
    specs = [_spec(f"adapters[{index}]", entry) for index, entry in enumerate(entries)]
    seen: set[str] = set()
    for index, spec in enumerate(specs):
        if spec.name in seen:
            raise ManifestError(f"adapters[{index}].name: {spec.name!r} appears twice")
        seen.add(spec.name)
    return specs


def read_manifest(path: Path) -> list[AdapterSpec]:
    """The manifest file's adapters; `ManifestError` (naming the file) when unreadable."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"cannot read it: {exc}") from None
    return parse_manifest(text)


def _spec(where: str, entry: object) -> AdapterSpec:
    if not isinstance(entry, dict):
        raise ManifestError(f"{where}: expected an object, got {type(entry).__name__}")
    unknown = sorted(set(entry) - _KNOWN_FIELDS)
    if unknown:
        raise ManifestError(f"{where}.{unknown[0]}: unknown field")
    name = entry.get("name")
    if not isinstance(name, str) or len(name) > _NAME_LENGTH or not _NAME.match(name):
        raise ManifestError(
            f"{where}.name: {name!r} is not a name of at most {_NAME_LENGTH} lowercase "
            "letters, digits and inner dashes"
        )
    scale = entry.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 <= scale <= 4:
        raise ManifestError(f"{where}.scale: {scale!r} is not a number from 0 to {MAX_SCALE:g}")
    strings = {key: entry.get(key) for key in ("path", "repo", "file", "revision")}
    for key, value in strings.items():
        if value is not None and (not isinstance(value, str) or not value):
            raise ManifestError(f"{where}.{key}: expected a non-empty string, got {value!r}")
    has_path, has_repo = strings["path"] is not None, strings["repo"] is not None
    if has_path == has_repo:
        raise ManifestError(f"{where}: expected exactly one of path or repo (with file)")
    if has_repo and strings["file"] is None:
        raise ManifestError(f"{where}.file: required with repo")
    if has_path and (strings["file"] is not None or strings["revision"] is not None):
        raise ManifestError(f"{where}.path: file and revision go with repo, not path")
    return AdapterSpec(name=name, scale=float(scale), **strings)


def weights_location(path: str) -> tuple[Path, str]:
    """A manifest `path` as (directory, weight file name): a .safetensors file, or a
    directory holding exactly one. `ValueError` with one line when it is neither."""
    location = Path(path)
    if location.is_dir():
        files = sorted(p.name for p in location.glob("*.safetensors"))
        if len(files) != 1:
            raise ValueError(
                f"{path}: a directory of an adapter must hold exactly one .safetensors "
                f"file, found {len(files)}"
            )
        return location, files[0]
    if not location.is_file():
        raise ValueError(f"{path}: no such file or directory")
    if location.suffix != ".safetensors":
        raise ValueError(f"{path}: not a .safetensors file")
    return location.parent, location.name


def fetch_weights(spec: AdapterSpec) -> AdapterFile:
    """Where `spec`'s weights are on disk, downloading a hub file first (blocking: call it
    off the loop). `ValueError` or the hub client's error when they cannot be had."""
    if spec.path is not None:
        directory, weight_name = weights_location(spec.path)
        return AdapterFile(spec.name, directory, weight_name)
    from huggingface_hub import hf_hub_download

    assert spec.repo is not None and spec.file is not None  # parse_manifest checked
    # The hub client takes a token from HF_TOKEN when the pod has one.
    downloaded = Path(hf_hub_download(spec.repo, spec.file, revision=spec.revision))
    return AdapterFile(spec.name, downloaded.parent, downloaded.name)


def fetch_all(specs: list[AdapterSpec]) -> tuple[list[AdapterFile], dict[str, str]]:
    """Each spec's weights on disk, and the reason of each that cannot be had."""
    files: list[AdapterFile] = []
    refused: dict[str, str] = {}
    for spec in specs:
        try:
            files.append(fetch_weights(spec))
        except Exception as exc:
            refused[spec.name] = one_line(exc)
    return files, refused


def update_backend(backend: Backend, delete: list[str], load: list[AdapterFile]) -> dict[str, str]:
    """On a worker's thread: the backend's update, or every adapter refused by one that
    takes none."""
    if isinstance(backend, TakesAdapters):
        return backend.update_adapters(delete, load)
    return {adapter.name: f"the {backend.name} takes no adapters" for adapter in load}


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


@dataclass
class Adapters:
    """The served adapters: the table requests are checked against, and the manifest's
    watcher that changes them. Owned by the service; runs on its event loop."""

    path: Path | None = None
    #: Why every adapter is refused, whatever the manifest says (None: each is loaded).
    refusal: str | None = None
    table: AdapterTable = NO_ADAPTERS
    #: What the workers were told to hold, by name (loaded or refused).
    _applied: dict[str, AdapterSpec] = field(default_factory=dict)
    #: The manifest's content (or read error) last seen: it is applied only when it changes.
    _seen: str | None = None
    _logged: str | None = None

    async def poll(self, engine: Engine) -> None:
        """Read the manifest; when it changed, apply it (a bad one: log it, keep all)."""
        if self.path is None:
            return
        try:
            text = await asyncio.to_thread(self.path.read_text)
        except (OSError, UnicodeDecodeError) as exc:
            self._refuse_manifest(f"read error {exc}", f"cannot read it: {exc}")
            return
        if text == self._seen:
            return
        try:
            specs = parse_manifest(text)
        except ManifestError as exc:
            self._refuse_manifest(text, str(exc))
            return
        self._seen = text
        await self.apply(engine, specs)

    async def poll_safely(self, engine: Engine) -> None:
        """`poll`, where a failure is logged: one bad change must not end the serving."""
        try:
            await self.poll(engine)
        except Exception as exc:
            log.error("applying the adapters file %s failed: %s", self.path, one_line(exc))

    async def watch(self, engine: Engine) -> None:
        """Poll every `POLL_S` seconds until cancelled."""
        while True:
            await asyncio.sleep(POLL_S)
            await self.poll_safely(engine)

    async def apply(self, engine: Engine, specs: list[AdapterSpec]) -> None:
        """Make the workers hold `specs`: delete removed and changed adapters, load new and
        changed ones; the table says `loading` meanwhile, then `loaded` or `refused`."""
        wanted = {spec.name: spec for spec in specs}
        changed = [
            spec for spec in specs
            if spec.name not in self._applied or self._applied[spec.name].source != spec.source
        ]  # fmt: skip
        changed_names = {spec.name for spec in changed}
        delete = [name for name in self._applied if name not in wanted or name in changed_names]
        now = {spec.name: self._status_now(spec, changed_names) for spec in specs}
        self._set(AdapterTable(now))
        if self.refusal is not None:  # nothing to fetch, nothing the workers would load
            refused = dict.fromkeys(changed_names, self.refusal)
        else:
            refused = await self._load(engine, changed, delete)
        self._applied = wanted
        self._set(
            self.table.with_states(
                {
                    spec.name: AdapterStatus("refused", spec.scale, refused[spec.name])
                    if spec.name in refused
                    else AdapterStatus("loaded", spec.scale)
                    for spec in changed
                }
            )
        )

    async def _load(
        self, engine: Engine, changed: list[AdapterSpec], delete: list[str]
    ) -> dict[str, str]:
        """Fetch the changed adapters, then delete and load on every worker; the reason
        of each that did not load anywhere."""
        files, refused = await asyncio.to_thread(fetch_all, changed)
        outcomes = await engine.call_on_each_worker(
            partial(update_backend, delete=delete, load=files)
        )
        for outcome in outcomes:  # refused on any worker: refused
            for name, why in outcome.items():
                refused.setdefault(name, why)
        return refused

    def _status_now(self, spec: AdapterSpec, changed: set[str]) -> AdapterStatus:
        if spec.name in changed:
            return AdapterStatus("loading", spec.scale)
        current = self.table.entries[spec.name]
        return AdapterStatus(current.state, spec.scale, current.reason)

    def _set(self, table: AdapterTable) -> None:
        self.table = table
        line = table.state_line()
        if line != self._logged:
            log.info("%s", line)
            self._logged = line

    def _refuse_manifest(self, seen: str, why: str) -> None:
        """Log a bad manifest once (not every poll) and keep the adapters as they are."""
        if seen != self._seen:
            self._seen = seen
            log.error("adapters file %s: %s; keeping the previous adapters", self.path, why)
