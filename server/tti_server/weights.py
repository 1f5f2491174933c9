"""`tti-server download`: fetch a diffusers pipeline from a Hugging Face hub, once, into a cache.

The operator runs this in a Job of its own; model pods then mount the cache read-only and load
the snapshot directory offline (`--model-path <cache>/hub/models--ORG--NAME/snapshots/<commit>`,
`HF_HUB_OFFLINE=1`). It uses the real `huggingface_hub` client against `HF_ENDPOINT`.

Under `--cache-dir` lies huggingface_hub's own cache in `hub/` (as under HF_HOME: so
`HF_HOME=<cache>` or `HF_HUB_CACHE=<cache>/hub` and the `hf cache` tools see it as theirs) and,
beside it, a `tti/` tree of this project's own:

    hub/models--ORG--NAME/blobs/<etag>                 file contents, shared by every revision
    hub/models--ORG--NAME/refs/<branch or tag>         the commit that name had when fetched
    hub/models--ORG--NAME/snapshots/<commit>/<path>    links into blobs/: the directory to load
    tti/models--ORG--NAME/<commit>/fetched.json        written last by a complete fetch
                                                       (fetched.<variant>.json for a variant)
    tti/models--ORG--NAME/<commit>/artefacts/          compile and optimisation artefacts made
                                                       for exactly these weights

Only the files the pipeline loads are fetched, chosen as diffusers' `DiffusionPipeline.download`
chooses them: `model_index.json`, each component's weights (safetensors when every weighted
component has them, else the pickled `.bin`; the `--variant` files where a component has them)
with its `config.json`, and every file of the components without weights (tokenizers,
scheduler). A repository's single-file checkpoints, ONNX and other copies are left on the hub.
With `--file PATH` only that one file is fetched (a LoRA adapter's weights; the repository
need not be a pipeline), into the same `hub/` layout, with no record in `tti/`.

Standard output is one JSON object a line: `resolved` (the commit, the files, the bytes),
`progress` (bytes done of bytes total, every `--progress-interval` seconds while it changes)
and, last, `done` (the snapshot and artefact directories, the bytes fetched). A failure exits
with the status of its cause (`CAUSES`), prints one line on standard error
(`tti-server download: error: unknown repository org/name: HTTP 404: Repository not found`)
and a last `failed` JSON line on standard output. `--status-file` receives the last object
too: a Job can point it at its `terminationMessagePath`.
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import math
import os
import queue
import re
import shutil
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from huggingface_hub.hf_api import RepoSibling

PROG = "tti-server download"
MODEL_INDEX = "model_index.json"
TOKEN_ENV = "HF_TOKEN"
HUB_DIR = "hub"  # as under HF_HOME: HF_HOME=<cache> makes HF_HUB_CACHE=<cache>/hub
TTI_DIR = "tti"
ARTEFACTS_DIR = "artefacts"

_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

Emit = Callable[[dict[str, Any]], None]


# --- Failure causes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Cause:
    """One kind of failure: its condition reason, the words the error line starts with,
    the exit status, and whether trying again later can help."""

    reason: str
    summary: str
    exit_code: int
    retryable: bool


CAUSES: dict[str, Cause] = {
    cause.reason: cause
    for cause in (
        Cause("RepositoryNotFound", "unknown repository", 3, retryable=False),
        Cause("RevisionNotFound", "unknown revision", 3, retryable=False),
        Cause("GatedRepository", "gated repository", 4, retryable=False),
        Cause("HubUnreachable", "unreachable hub", 5, retryable=True),
        Cause("DiskFull", "disk full", 6, retryable=True),
        Cause("NotAPipeline", "not a diffusers pipeline", 7, retryable=False),
        Cause("FileNotFound", "no such file in", 3, retryable=False),
        Cause("HubError", "hub error", 8, retryable=True),
        Cause("Other", "failed", 1, retryable=True),
    )
}


class FetchError(Exception):
    """A fetch that failed, classified: `line` is the one line the operator shows."""

    def __init__(self, reason: str, detail: str, subject: str = "") -> None:
        self.cause = CAUSES[reason]
        self.detail = detail
        self.subject = subject  # what the summary is about: a repository, the hub
        super().__init__(self.line)

    @property
    def line(self) -> str:
        """`unknown repository org/name: HTTP 404: Repository not found`."""
        about = f"{self.cause.summary} {self.subject}" if self.subject else self.cause.summary
        return f"{about}: {self.detail}"

    def as_event(self) -> dict[str, Any]:
        return {
            "event": "failed",
            "reason": self.cause.reason,
            "retryable": self.cause.retryable,
            "message": self.line,
        }


@dataclass(frozen=True)
class FailureContext:
    """What an error line names besides the hub's own message."""

    repo_id: str
    revision: str
    endpoint: str
    cache_dir: Path
    timeout: float
    token_given: bool


def classify(exc: BaseException, context: FailureContext) -> FetchError:
    """The cause of `exc`, looking through what it wraps (the hub client wraps network errors)."""
    if isinstance(exc, FetchError):
        return exc
    chain = list(_exception_chain(exc))
    for classifier in _CLASSIFIERS:
        for link in chain:
            found = classifier(link, context)
            if found is not None:
                return found
    return FetchError("Other", one_line(exc))


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _disk_full(exc: BaseException, context: FailureContext) -> FetchError | None:
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return FetchError("DiskFull", str(exc.strerror), str(context.cache_dir))
    return None


def _hub_answer(exc: BaseException, context: FailureContext) -> FetchError | None:
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if not isinstance(exc, HfHubHTTPError):
        return None
    said = hub_message(exc)
    repo = context.repo_id
    if isinstance(exc, GatedRepoError):  # before its base class, RepositoryNotFoundError
        whose = "the token has no access" if context.token_given else "no token was given"
        return FetchError("GatedRepository", said, f"{repo} ({whose})")
    if isinstance(exc, RevisionNotFoundError):
        return FetchError("RevisionNotFound", said, f"{context.revision} of {repo}")
    if isinstance(exc, RepositoryNotFoundError):
        return FetchError("RepositoryNotFound", said, repo)
    return FetchError("HubError", said, context.endpoint)


def _network(exc: BaseException, context: FailureContext) -> FetchError | None:
    import httpx2
    from huggingface_hub.errors import OfflineModeIsEnabled

    if isinstance(exc, httpx2.TimeoutException):
        detail = f"no answer within {context.timeout:g} s"
        return FetchError("HubUnreachable", detail, context.endpoint)
    if isinstance(exc, httpx2.TransportError):
        return FetchError("HubUnreachable", one_line(exc), context.endpoint)
    if isinstance(exc, OfflineModeIsEnabled):
        return FetchError("HubUnreachable", "HF_HUB_OFFLINE is set: the hub may not be asked")
    return None


# Most specific first: a full disk while talking to the hub is a full disk.
_CLASSIFIERS = (_disk_full, _hub_answer, _network)


def hub_message(exc: Any) -> str:
    """`HTTP 404: Repository not found`: the status and the first line the hub said."""
    status = exc.response.status_code
    said = (exc.server_message or str(exc)).strip().splitlines()
    return f"HTTP {status}: {said[0]}" if said else f"HTTP {status}"


def one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --- Which files the pipeline needs ----------------------------------------------------------

_WEIGHT_BASES = "diffusion_pytorch_model|model|pytorch_model|weights"
_SHARD = r"\d{5}-of-\d{5}"
# `model.safetensors`, `model.fp16.safetensors`, `model-00001-of-00002.safetensors`,
# `model.fp16-00001-of-00002.safetensors` and the older `model-00001-of-00002.fp16.safetensors`.
_WEIGHT_FILE = re.compile(
    rf"^(?:{_WEIGHT_BASES})(?:-{_SHARD})?(?:\.(?P<variant>\w+?)(?:-{_SHARD})?)?"
    r"\.(?P<format>safetensors|bin)$"
)
# `model.safetensors.index.json`, `model.safetensors.index.fp16.json` and the older
# `model.safetensors.fp16.index.json`.
_INDEX_FILE = re.compile(
    rf"^(?:{_WEIGHT_BASES})\.(?P<format>safetensors|bin)"
    r"(?:\.index(?:\.(?P<variant>\w+))?|\.(?P<legacy_variant>\w+)\.index)\.json$"
)
# What diffusers counts as a component's weights (it then never fetches the ONNX ones).
_WEIGHT_EXTENSIONS = (".safetensors", ".bin", ".onnx", ".pb", ".flashpack")
# Files at the top of a repository that a pipeline may read (diffusers' allow list).
_ROOT_FILES = frozenset(
    {
        MODEL_INDEX,
        "scheduler_config.json",
        "config.json",
        "chat_template.jinja",
        "generation_config.json",
        "preprocessor_config.json",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
)


@dataclass(frozen=True)
class _Weight:
    path: str
    format: str  # "safetensors" or "bin"
    variant: str | None


def pipeline_files(
    paths: Iterable[str], model_index: Mapping[str, Any], variant: str | None
) -> list[str]:
    """The files of a repository (`paths`) that load the pipeline `model_index` describes.

    `variant` (e.g. `fp16`) picks a component's variant weights where it has them, its plain
    ones where not.
    """
    paths = sorted(set(paths))
    folders = [
        key
        for key, value in model_index.items()
        if isinstance(value, list) and key != "_class_name"
    ]
    by_folder = {folder: [p for p in paths if p.startswith(folder + "/")] for folder in folders}
    weighted = {
        folder for folder, files in by_folder.items() if any(_is_weight_file(p) for p in files)
    }
    weights = {folder: _weights_of(by_folder[folder]) for folder in weighted}
    safetensors = all(
        any(w.format == "safetensors" for w in _variant_group(weights[folder], variant))
        for folder in weighted
    )
    chosen_format = "safetensors" if safetensors else "bin"
    selected = [p for p in paths if p in _ROOT_FILES]
    for folder in folders:
        if folder not in weighted:
            selected += by_folder[folder]
            continue
        usable = [w for w in weights[folder] if w.format == chosen_format]
        selected += [w.path for w in _variant_group(usable, variant)]
        config = f"{folder}/config.json"
        if config in paths:
            selected.append(config)
    return sorted(set(selected))


def _is_weight_file(path: str) -> bool:
    return path.count("/") == 1 and path.endswith(_WEIGHT_EXTENSIONS)


def _weights_of(paths: list[str]) -> list[_Weight]:
    """The weight and shard-index files directly in a component folder, with format and variant."""
    found = []
    for path in paths:
        if path.count("/") != 1:
            continue
        name = path.rsplit("/", 1)[1]
        match = _WEIGHT_FILE.match(name)
        if match is not None:
            found.append(_Weight(path, match["format"], match["variant"]))
            continue
        match = _INDEX_FILE.match(name)
        if match is not None:
            found.append(
                _Weight(path, match["format"], match["variant"] or match["legacy_variant"])
            )
    return found


def _variant_group(weights: list[_Weight], variant: str | None) -> list[_Weight]:
    """The variant's files where there are any, else the plain ones."""
    if variant is not None:
        chosen = [w for w in weights if w.variant == variant]
        if chosen:
            return chosen
    return [w for w in weights if w.variant is None]


# --- Where things live in the cache ----------------------------------------------------------


def repo_folder(repo_id: str) -> str:
    """huggingface_hub's folder name for a model repository: `models--ORG--NAME`."""
    return "models--" + repo_id.replace("/", "--")


@dataclass(frozen=True)
class CacheEntry:
    """One repository at one commit in the cache."""

    cache_dir: Path
    repo_id: str
    commit: str

    @property
    def hub_cache(self) -> Path:
        """huggingface_hub's cache (HF_HUB_CACHE); nothing of ours inside it."""
        return self.cache_dir / HUB_DIR

    @property
    def repo_dir(self) -> Path:
        return self.hub_cache / repo_folder(self.repo_id)

    @property
    def snapshot(self) -> Path:
        """The pipeline directory model pods load."""
        return self.repo_dir / "snapshots" / self.commit

    @property
    def tti_dir(self) -> Path:
        return self.cache_dir / TTI_DIR / repo_folder(self.repo_id) / self.commit

    @property
    def artefacts(self) -> Path:
        """Compile and optimisation artefacts for exactly these weights."""
        return self.tti_dir / ARTEFACTS_DIR

    def record(self, variant: str | None) -> Path:
        """What a complete fetch of this entry (with `variant`) wrote, last."""
        return self.tti_dir / (f"fetched.{variant}.json" if variant else "fetched.json")

    def has_blob(self, etag: str | None) -> bool:
        return etag is not None and (self.repo_dir / "blobs" / etag).exists()


# --- Progress --------------------------------------------------------------------------------


class Progress:
    """Bytes done of bytes total, fed by the hub client's progress-bar hooks from many threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.done = 0
        self.total = 0
        self.fetched = 0  # bytes that came over the network

    def start(self, total: int, done: int) -> None:
        with self._lock:
            self.total, self.done = total, done

    def add_done(self, count: int) -> None:
        with self._lock:
            self.done += count

    def add_fetched(self, count: int) -> None:
        with self._lock:
            self.fetched += count

    def as_event(self) -> dict[str, Any]:
        with self._lock:
            done, total = self.done, self.total
        return {
            "event": "progress",
            "bytes_done": done,
            "bytes_total": total,
            "message": f"{format_bytes(done)} of {format_bytes(total)}",
        }

    def file_done(self, size: int, counter: type[ByteCounter]) -> None:
        """A file is in place: count what the client did not report writing (a blob it found
        already there, say) so that done reaches total."""
        self.add_done(size - counter.written)

    def bar_class(self) -> type[ByteCounter]:
        """A `tqdm_class` for one file's download, counting into this object."""
        return type("FileByteCounter", (ByteCounter,), {"progress": self, "written": 0})


class ByteCounter:
    """What the hub client needs of a `tqdm_class`, counting bytes instead of drawing a bar.

    The client calls `update(n)` for bytes written to disk and `update_transfer(n)` for bytes
    received (the same figure for plain HTTP; Xet downloads differ); having `update_transfer`
    also makes a Xet download use one such bar rather than two. One subclass per file
    (`Progress.bar_class`): `written` is then what the client wrote of that file.
    """

    progress: Progress
    written: int = 0

    def __init__(self, *args: Any, total: int | None = None, **kwargs: Any) -> None:
        self.total = total
        self.n = 0

    def __enter__(self) -> ByteCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, count: float | None = 1) -> None:
        written = int(count or 0)
        self.n += written
        type(self).written += written
        self.progress.add_done(written)

    def update_transfer(self, count: float | None = 1) -> None:
        self.progress.add_fetched(int(count or 0))

    def set_postfix_str(self, *args: Any, **kwargs: Any) -> None:
        return None

    set_transfer_postfix_str = set_postfix_str
    set_description = set_postfix_str
    set_description_str = set_postfix_str
    refresh = set_postfix_str
    close = set_postfix_str


class ProgressReporter:
    """Emits the `progress` event every `interval` seconds while the figure moves, on a thread
    of its own; once when it starts and once when it stops whatever the interval."""

    def __init__(self, progress: Progress, emit: Emit, interval: float) -> None:
        self._progress = progress
        self._emit = emit
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tti-progress", daemon=True)
        self._last: dict[str, Any] | None = None

    def __enter__(self) -> ProgressReporter:
        self._report()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        if exc[0] is None:
            self._report()

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._report()

    def _report(self) -> None:
        event = self._progress.as_event()
        if event != self._last:
            self._last = event
            self._emit(event)


def format_bytes(count: int) -> str:
    """Decimal units, as the hub shows sizes: `6.9 GB`."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if count >= size:
            return f"{count / size:.1f} {unit}"
    return f"{count} B"


# --- The fetch -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchRequest:
    repo_id: str
    cache_dir: Path
    revision: str = "main"
    variant: str | None = None
    token: str | None = None
    timeout: float = 30.0
    workers: int = 4
    progress_interval: float = 5.0
    #: The most the cache may hold, in bytes (None: what the disk has free).
    room: int | None = None
    #: Fetch only this file of the repository (None: the pipeline's files).
    file: str | None = None


@dataclass(frozen=True)
class FetchResult:
    entry: CacheEntry
    revision: str
    variant: str | None
    files: dict[str, int] = field(repr=False)
    bytes_fetched: int

    @property
    def bytes_total(self) -> int:
        return sum(self.files.values())

    def as_event(self) -> dict[str, Any]:
        return {
            "event": "done",
            "repo": self.entry.repo_id,
            "revision": self.revision,
            "commit": self.entry.commit,
            "variant": self.variant,
            "snapshot": str(self.entry.snapshot),
            "artefacts": str(self.entry.artefacts),
            "files": len(self.files),
            "bytes_total": self.bytes_total,
            "bytes_fetched": self.bytes_fetched,
        }


def fetch(request: FetchRequest, emit: Emit) -> FetchResult:
    """Resolve the revision, fetch what the pipeline needs that the cache lacks, record it.

    Raises `FetchError` for what it recognises itself; anything the hub client raises goes
    through `classify` in `run_download`.
    """
    from huggingface_hub import hf_hub_download

    # False, not None: no token means none, not one the client finds in a home directory.
    token: str | bool = request.token or False
    entry, siblings = resolve(request, token)
    progress = Progress()
    sizes: dict[str, int] = {}

    def download(path: str) -> None:
        counter = progress.bar_class()
        hf_hub_download(
            request.repo_id,
            path,
            revision=entry.commit,
            cache_dir=entry.hub_cache,
            token=token,
            etag_timeout=request.timeout,
            tqdm_class=counter,
        )
        progress.file_done(sizes.get(path, 0), counter)

    if request.file is not None:
        files = [request.file]
    else:
        download(MODEL_INDEX)
        files = pipeline_files(siblings, read_model_index(entry), request.variant)
    sizes.update({path: siblings[path].size or 0 for path in files})
    present = {path for path in files if (entry.snapshot / path).exists()}
    # A blob already here (from another revision) is linked, not fetched again.
    to_fetch = sum(
        sizes[path]
        for path in files
        if path not in present and not entry.has_blob(sibling_etag(siblings[path]))
    )
    total = sum(sizes.values())
    check_room(entry.hub_cache, to_fetch, total, request.room)
    emit(
        {
            "event": "resolved",
            "repo": request.repo_id,
            "revision": request.revision,
            "commit": entry.commit,
            "variant": request.variant,
            "files": len(files),
            "bytes_total": total,
            "bytes_to_fetch": to_fetch,
        }
    )
    progress.start(total=total, done=sum(sizes[path] for path in present))
    with ProgressReporter(progress, emit, request.progress_interval):
        run_all(download, [path for path in files if path not in present], request.workers)
    absent = [path for path in files if not (entry.snapshot / path).exists()]
    if absent:
        detail = f"the hub client left {', '.join(absent[:3])} out of the snapshot"
        raise FetchError("Other", detail, request.repo_id)
    result = FetchResult(entry, request.revision, request.variant, sizes, progress.fetched)
    if request.file is None:
        write_record(result)
    else:
        write_ref(result)
    return result


def resolve(request: FetchRequest, token: str | bool) -> tuple[CacheEntry, dict[str, RepoSibling]]:
    """The commit the revision names now, and the repository's files at it (with sizes)."""
    from huggingface_hub import HfApi

    info = HfApi(token=token).model_info(
        request.repo_id, revision=request.revision, files_metadata=True, timeout=request.timeout
    )
    if not info.sha:
        raise FetchError("HubError", f"no commit for {request.revision}", request.repo_id)
    siblings = {sibling.rfilename: sibling for sibling in info.siblings or []}
    if request.file is not None:
        if request.file not in siblings:
            detail = f"no {request.file} at {info.sha}"
            raise FetchError("FileNotFound", detail, request.repo_id)
    elif MODEL_INDEX not in siblings:
        raise FetchError("NotAPipeline", f"no {MODEL_INDEX} at {info.sha}", request.repo_id)
    return CacheEntry(request.cache_dir, request.repo_id, info.sha), siblings


def sibling_etag(sibling: RepoSibling) -> str | None:
    """The name of the file's blob in the cache: its LFS sha256, else its git blob id."""
    return sibling.lfs.sha256 if sibling.lfs is not None else sibling.blob_id


def read_model_index(entry: CacheEntry) -> dict[str, Any]:
    path = entry.snapshot / MODEL_INDEX
    try:
        index = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        detail = f"{MODEL_INDEX} is not valid JSON ({one_line(exc)})"
        raise FetchError("NotAPipeline", detail, entry.repo_id) from exc
    if not isinstance(index, dict) or "_class_name" not in index:
        raise FetchError("NotAPipeline", f"{MODEL_INDEX} names no pipeline class", entry.repo_id)
    return index


def check_room(directory: Path, to_fetch: int, total: int, room: int | None) -> None:
    """Fail before fetching anything when the files cannot fit (the hub client only warns):
    in the disk's free space, and in `room` (a claim's size, which many volumes, host
    paths among them, do not enforce)."""
    directory.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory).free
    if to_fetch > free:
        detail = f"{format_bytes(to_fetch)} to fetch, {format_bytes(free)} free"
        raise FetchError("DiskFull", detail, str(directory))
    if room is not None and total > room:
        detail = f"the files need {format_bytes(total)}, the cache holds {format_bytes(room)}"
        raise FetchError("DiskFull", detail, str(directory))


def run_all(task: Callable[[str], object], items: list[str], workers: int) -> None:
    """Run `task` on every item, `workers` at a time; raise the first failure at once.

    The threads are daemons: a download stuck in the hub client's own retries must not keep
    the process from exiting with the error it already has.
    """
    pending: queue.SimpleQueue[str] = queue.SimpleQueue()
    for item in items:
        pending.put(item)
    outcomes: queue.SimpleQueue[BaseException | None] = queue.SimpleQueue()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                item = pending.get_nowait()
            except queue.Empty:
                return
            try:
                task(item)
            except BaseException as exc:  # handed to the main thread, which raises it
                outcomes.put(exc)
            else:
                outcomes.put(None)

    for _ in range(min(workers, len(items))):
        threading.Thread(target=work, name="tti-download", daemon=True).start()
    for _ in items:
        failure = outcomes.get()
        if failure is not None:
            stop.set()
            raise failure


def write_ref(result: FetchResult) -> None:
    """Point the revision's ref at the commit, as huggingface_hub does: offline loads by
    name read it."""
    entry = result.entry
    if result.revision != entry.commit:
        write_atomically(entry.repo_dir / "refs" / result.revision, entry.commit)


def write_record(result: FetchResult) -> None:
    """Point the revision's ref at the commit, make the artefacts directory, and mark the
    entry complete (last)."""
    entry = result.entry
    write_ref(result)
    entry.artefacts.mkdir(parents=True, exist_ok=True)
    record = {
        "repo": entry.repo_id,
        "revision": result.revision,
        "commit": entry.commit,
        "variant": result.variant,
        "files": result.files,
        "bytes": result.bytes_total,
        "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    write_atomically(entry.record(result.variant), json.dumps(record, indent=2) + "\n")


def write_atomically(path: Path, text: str) -> None:
    """Readers see the old content or the new, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_text(text)
    os.replace(partial, path)


# --- The command -----------------------------------------------------------------------------


class LineWriter:
    """One JSON object a line, whole, from any thread."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, sort_keys=False)
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()


def build_download_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Fetch the files a diffusers pipeline loads from a Hugging Face hub "
        "($HF_ENDPOINT, default https://huggingface.co) into a cache that model pods read "
        "offline. Prints one JSON object a line; the last one says what happened.",
        epilog="exit status: 0 fetched; 2 bad arguments; "
        + "; ".join(f"{c.exit_code} {c.summary}" for c in CAUSES.values() if c.reason != "Other")
        + "; 1 anything else",
    )
    parser.add_argument("repo_id", metavar="REPO", help="the repository, ORG/NAME")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        required=True,
        help="the cache: huggingface_hub's in DIR/hub, this project's in DIR/tti",
    )
    parser.add_argument("--revision", default="main", help="branch, tag or commit (default: main)")
    parser.add_argument(
        "--variant", default=None, help="weight variant to prefer, e.g. fp16 (default: none)"
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help=f"file holding the hub token (default: ${TOKEN_ENV} if set); never printed",
    )
    parser.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        help="seconds to wait for each answer from the hub (default: 30)",
    )
    parser.add_argument(
        "--progress-interval",
        type=_positive_float,
        default=5.0,
        help="seconds between progress lines (default: 5)",
    )
    parser.add_argument(
        "--workers", type=_positive_int, default=4, help="files fetched at once (default: 4)"
    )
    parser.add_argument(
        "--room",
        type=_positive_int,
        default=None,
        help="bytes the cache may hold (a claim's size); more is refused as a full disk",
    )
    parser.add_argument(
        "--file",
        default=None,
        help="fetch only this file of the repository (e.g. a LoRA adapter's .safetensors); "
        "the repository need not be a pipeline",
    )
    parser.add_argument(
        "--status-file",
        type=Path,
        default=None,
        help="also write the last JSON object here (e.g. a Job's /dev/termination-log)",
    )
    return parser


def run_download(argv: list[str]) -> int:
    parser = build_download_parser()
    args = parser.parse_args(argv)
    if not _REPO_ID.match(args.repo_id) or ".." in args.repo_id:
        parser.error(f"REPO: {args.repo_id!r} is not a repository id ORG/NAME")
    if args.file is not None and (args.file.startswith("/") or ".." in args.file.split("/")):
        parser.error(f"--file: {args.file!r} is not a path inside the repository")
    try:
        token = read_token(args.token_file, os.environ)
    except (OSError, ValueError) as exc:
        parser.error(f"--token-file: {exc}")
    endpoint = _quiet_hub_client(args.timeout)
    request = FetchRequest(
        repo_id=args.repo_id,
        cache_dir=args.cache_dir,
        revision=args.revision,
        variant=args.variant,
        token=token,
        timeout=args.timeout,
        workers=args.workers,
        progress_interval=args.progress_interval,
        room=args.room,
        file=args.file,
    )
    out = LineWriter(sys.stdout)
    try:
        result = fetch(request, out.emit)
    except Exception as exc:  # every failure ends as one classified line
        context = FailureContext(
            args.repo_id, args.revision, endpoint, args.cache_dir, args.timeout, token is not None
        )
        error = classify(exc, context)
        _finish(out, error.as_event(), args.status_file)
        print(f"{PROG}: error: {error.line}", file=sys.stderr, flush=True)
        return error.cause.exit_code
    _finish(out, result.as_event(), args.status_file)
    return 0


def read_token(token_file: Path | None, environ: Mapping[str, str]) -> str | None:
    """The hub token: the file's content when one is named (a mounted Secret), else $HF_TOKEN."""
    if token_file is None:
        return environ.get(TOKEN_ENV, "").strip() or None
    try:
        token = token_file.read_text().strip()
    except OSError as exc:
        raise OSError(f"cannot read {token_file}: {exc.strerror}") from None
    if not token:
        raise ValueError(f"{token_file} is empty")
    return token


def _finish(out: LineWriter, event: dict[str, Any], status_file: Path | None) -> None:
    out.emit(event)
    if status_file is not None:
        try:
            status_file.write_text(json.dumps(event) + "\n")
        except OSError as exc:
            print(f"{PROG}: cannot write {status_file}: {exc.strerror}", file=sys.stderr)


def _quiet_hub_client(timeout: float) -> str:
    """Quiet the hub client, give its downloads our timeout; return the endpoint it uses."""
    from huggingface_hub import constants
    from huggingface_hub.utils import logging as hub_logging

    # Its retry warnings would bury the one error line; the JSON lines say what happens.
    # (Its logging module sets the level when first imported: only after that, ours holds.)
    hub_logging.get_logger().setLevel(logging.ERROR)
    # The HF_HUB_DOWNLOAD_TIMEOUT variable's value, read by each download as it starts.
    constants.HF_HUB_DOWNLOAD_TIMEOUT = math.ceil(timeout)
    # HF_HUB_DISABLE_TELEMETRY: without it the client's first request is a look-up of AI
    # agent names on the hub (its own 3 s timeout, a file written in HF_HOME), before ours.
    constants.HF_HUB_DISABLE_TELEMETRY = True
    # check_room fails before the first byte; the client's per-file warning adds nothing.
    warnings.filterwarnings("ignore", message="Not enough free disk space")
    return str(constants.ENDPOINT)


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value
