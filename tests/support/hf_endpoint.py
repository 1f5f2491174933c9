"""A local Hugging Face-compatible hub for tests: directories served as model repositories.

    hub = HubEndpoint()
    hub.add_repo("tti-test/tiny-sdxl", tiny_model_dir)
    with hub:
        run(..., env={"HF_ENDPOINT": hub.url})
        hub.bytes_sent("tti-test/tiny-sdxl")  # {path: bytes of that file's content sent}

It answers what `huggingface_hub` (2.x) asks, with the headers it reads
(`huggingface_hub/file_download.py`, `utils/_http.py`, `hf_api.py`):

- `GET /api/models/ORG/NAME[/revision/REV][?blobs=true]`: model info, `sha` the commit and
  `siblings` (with `size`, `blobId` and `lfs` when `blobs` is asked).
- `GET /api/models/ORG/NAME/tree/REV[/PATH][?recursive=true]`: the file listing.
- `HEAD|GET /ORG/NAME/resolve/REV/PATH`: a plain file answers 200 with `ETag` (its git blob
  id), `X-Repo-Commit` and `Content-Length`; an LFS file (weights, as the hub's default
  `.gitattributes` has them) answers 302 to a second port standing for the hub's CDN, with
  `X-Linked-Etag` (its sha256), `X-Linked-Size` and `X-Repo-Commit`, as the hub does. The
  client follows that redirect without the token, because the origin differs.
- The CDN answers `GET` with the bytes, and `Range: bytes=N-` with 206 (the client resumes
  with it after a dropped connection).

Errors carry the hub's `X-Error-Code` and `X-Error-Message` (which the client turns into its
typed errors): an unknown repository 404 `RepoNotFound`, an unknown revision 404
`RevisionNotFound`, an unknown file 404 `EntryNotFound`; a gated repository's files 401
`GatedRepo` without a token and 403 `GatedRepo` with one not on its list (its model info
stays public, as on the hub). `failure = "500"` makes every request answer 500,
`failure = "hang"` makes every request wait, unanswered, until `reset` or `stop`;
`chunk_delay` slows file bodies down (seconds per 64 KiB) so progress can be watched;
`cut_after` drops the connection after that many bytes of each larger file, once, so
that the client must resume it with `Range`.

Every byte of file content sent is counted per repository and file (`bytes_sent`), from the
hub and the CDN alike; `GET /_tti/bytes-sent` answers the same as JSON (whatever the failure)
for a process outside this one, such as a pod's fetch on the test cluster:
`python -m support.hf_endpoint ORG/NAME=DIR ... [--host 0.0.0.0] [--failure 500|hang]` prints
its two URLs as JSON and serves until stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import signal
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit

Failure = Literal["500", "hang"] | None

#: Stored in LFS by the hub's default `.gitattributes` (the weights; nothing a tokenizer needs).
LFS_EXTENSIONS = (
    ".safetensors", ".bin", ".ckpt", ".h5", ".msgpack", ".onnx", ".pb", ".pt", ".pth", ".gguf",
)  # fmt: skip
CHUNK = 64 * 1024
_LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
_SERVER_ERROR = "Internal Error - We're working hard to fix this as soon as possible!"


@dataclass(frozen=True)
class RepoFile:
    path: str
    source: Path
    size: int
    sha256: str
    lfs: bool
    blob_id: str  # the git blob id: of the content, or of the LFS pointer for an LFS file

    @property
    def pointer(self) -> str:
        return lfs_pointer(self.sha256, self.size)

    @property
    def etag(self) -> str:
        return self.sha256 if self.lfs else self.blob_id

    def sibling(self, blobs: bool) -> dict[str, Any]:
        entry: dict[str, Any] = {"rfilename": self.path}
        if blobs:
            entry.update(size=self.size, blobId=self.blob_id)
            if self.lfs:
                entry["lfs"] = {
                    "sha256": self.sha256,
                    "size": self.size,
                    "pointerSize": len(self.pointer),
                }
        return entry

    def tree_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "type": "file",
            "oid": self.blob_id,
            "size": self.size,
            "path": self.path,
        }
        if self.lfs:
            entry["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(self.pointer)}
        return entry


@dataclass
class Repo:
    repo_id: str
    files: dict[str, RepoFile]
    commit: str
    gated_tokens: frozenset[str] | None = None  # None: not gated

    @property
    def gated(self) -> bool:
        return self.gated_tokens is not None

    def commit_for(self, revision: str) -> str | None:
        return self.commit if revision in ("main", self.commit) else None


def lfs_pointer(sha256: str, size: int) -> str:
    return _LFS_POINTER.format(sha256=sha256, size=size)


def git_blob_id(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def read_repo(repo_id: str, directory: Path, gated_tokens: frozenset[str] | None) -> Repo:
    """Every file under `directory` (symlinks followed), hashed once."""
    files = {}
    for source in sorted(p for p in directory.rglob("*") if p.is_file()):
        path = source.relative_to(directory).as_posix()
        digest = hashlib.sha256()
        with source.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
        size = source.stat().st_size
        sha256 = digest.hexdigest()
        lfs = path.endswith(LFS_EXTENSIONS)
        blob = lfs_pointer(sha256, size).encode() if lfs else source.read_bytes()
        files[path] = RepoFile(path, source, size, sha256, lfs, git_blob_id(blob))
    tree = "".join(f"{f.path}\0{f.etag}\n" for f in files.values())
    commit = hashlib.sha1(f"{repo_id}\n{tree}".encode()).hexdigest()
    return Repo(repo_id, files, commit, gated_tokens)


@dataclass
class HubEndpoint:
    """The hub on one loopback port and its CDN on another; `with` starts and stops both."""

    host: str = "127.0.0.1"
    port: int = 0
    cdn_port_asked: int = 0
    repos: dict[str, Repo] = field(default_factory=dict)
    failure: Failure = None
    chunk_delay: float = 0.0
    cut_after: int | None = None
    requests: list[str] = field(default_factory=list)
    _sent: dict[str, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stopping: threading.Event = field(default_factory=threading.Event)
    _release: threading.Event = field(default_factory=threading.Event)
    _servers: list[ThreadingHTTPServer] = field(default_factory=list)
    _cut: set[tuple[str, str]] = field(default_factory=set)

    def add_repo(self, repo_id: str, directory: Path, gated_tokens: set[str] | None = None) -> Repo:
        tokens = None if gated_tokens is None else frozenset(gated_tokens)
        repo = read_repo(repo_id, directory, tokens)
        self.repos[repo_id] = repo
        return repo

    @property
    def url(self) -> str:
        return self._url(0)

    @property
    def cdn_url(self) -> str:
        return self._url(1)

    @property
    def cdn_port(self) -> int:
        return self._servers[1].server_port

    def _url(self, index: int) -> str:
        return f"http://{self.host}:{self._servers[index].server_port}"

    def bytes_sent(self, repo_id: str | None = None) -> dict[str, int]:
        """Bytes of file content sent, per file (`repo/path` keys when no repository is named)."""
        with self._lock:
            if repo_id is not None:
                return dict(self._sent.get(repo_id, {}))
            return {f"{r}/{p}": n for r, files in self._sent.items() for p, n in files.items()}

    def total_bytes_sent(self, repo_id: str | None = None) -> int:
        return sum(self.bytes_sent(repo_id).values())

    def reset(self) -> None:
        """Healthy again, nothing counted; requests left hanging are dropped."""
        self.failure = None
        self.chunk_delay = 0.0
        self.cut_after = None
        release, self._release = self._release, threading.Event()
        release.set()
        with self._lock:
            self._sent.clear()
            self.requests.clear()
            self._cut.clear()

    def count(self, repo_id: str, path: str, sent: int) -> None:
        with self._lock:
            files = self._sent[repo_id]
            files[path] = files.get(path, 0) + sent

    def log(self, line: str) -> None:
        with self._lock:
            self.requests.append(line)

    def cut_point(self, repo: Repo, file: RepoFile) -> int | None:
        """Where to drop the connection sending `file` whole: `cut_after`, the first time only."""
        key = (repo.repo_id, file.path)
        with self._lock:
            if self.cut_after is None or file.size <= self.cut_after or key in self._cut:
                return None
            self._cut.add(key)
        return self.cut_after

    def pause_between_chunks(self) -> None:
        if self.chunk_delay:
            self._stopping.wait(self.chunk_delay)

    def hang(self) -> None:
        """Wait, answering nothing, until `reset` or `stop`."""
        self._release.wait()

    def __enter__(self) -> HubEndpoint:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self._stopping.clear()
        self._release = threading.Event()
        for handler, port in ((_HubHandler, self.port), (_CdnHandler, self.cdn_port_asked)):
            server = ThreadingHTTPServer((self.host, port), handler)
            server.daemon_threads = True
            server.endpoint = self  # type: ignore[attr-defined]
            self._servers.append(server)
            threading.Thread(target=server.serve_forever, name="hf-endpoint", daemon=True).start()

    def stop(self) -> None:
        self._stopping.set()  # cuts a slowed-down body short
        self._release.set()  # answers hanging requests: with nothing
        for server in self._servers:
            server.shutdown()
            server.server_close()
        self._servers.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "tti-test-hub"

    @property
    def endpoint(self) -> HubEndpoint:
        return self.server.endpoint  # type: ignore[attr-defined,no-any-return]

    def log_message(self, format: str, *args: Any) -> None:
        asked = self.headers.get("Range")
        self.endpoint.log(f"{self.command} {self.path}" + (f" Range: {asked}" if asked else ""))

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, head: bool) -> None:
        endpoint = self.endpoint
        url = urlsplit(self.path)
        segments = [unquote(s) for s in url.path.strip("/").split("/")]
        if segments[0] == "_tti":  # the test's own questions, answered whatever the failure
            self.route(segments, parse_qs(url.query), head)
            return
        if endpoint.failure == "hang":
            endpoint.hang()
            self.close_connection = True
            return
        if endpoint.failure == "500":
            self.send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": _SERVER_ERROR}, head)
            return
        self.route(segments, parse_qs(url.query), head)

    def route(self, segments: list[str], query: dict[str, list[str]], head: bool) -> None:
        raise NotImplementedError

    def send_json(
        self,
        status: HTTPStatus,
        body: Any,
        head: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def send_hub_error(
        self,
        status: HTTPStatus,
        code: str,
        message: str,
        head: bool,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_json(
            status,
            {"error": message},
            head,
            {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})},
        )

    def not_found(self, head: bool) -> None:
        self.send_hub_error(HTTPStatus.NOT_FOUND, "NotFound", "Sorry, we can't find that.", head)

    def send_file(self, repo: Repo, file: RepoFile, headers: dict[str, str], head: bool) -> None:
        """The file's bytes (from `Range: bytes=N-` when asked), counted as sent."""
        start = _range_start(self.headers.get("Range"), file.size)
        if start is None:
            self.send_response(HTTPStatus.OK)
            start = 0
        else:
            self.send_response(HTTPStatus.PARTIAL_CONTENT)
            self.send_header("Content-Range", f"bytes {start}-{file.size - 1}/{file.size}")
        self.send_header("Content-Length", str(file.size - start))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if head:
            return
        endpoint = self.endpoint
        # Past this many bytes the connection drops, once per file (the client resumes).
        limit = endpoint.cut_point(repo, file) if start == 0 else None
        with file.source.open("rb") as handle:
            handle.seek(start)
            sent = 0
            while chunk := handle.read(CHUNK if limit is None else min(CHUNK, limit - sent)):
                endpoint.pause_between_chunks()
                self.wfile.write(chunk)
                endpoint.count(repo.repo_id, file.path, len(chunk))
                sent += len(chunk)
        if limit is not None:
            self.close_connection = True


class _HubHandler(_Handler):
    def route(self, segments: list[str], query: dict[str, list[str]], head: bool) -> None:
        if segments[:2] == ["_tti", "bytes-sent"]:
            self.send_json(HTTPStatus.OK, self.endpoint.bytes_sent(), head)
        elif segments[:2] == ["api", "models"] and len(segments) >= 4:
            self.api(f"{segments[2]}/{segments[3]}", segments[4:], query, head)
        elif len(segments) >= 5 and segments[2] == "resolve":
            self.resolve(f"{segments[0]}/{segments[1]}", segments[3], "/".join(segments[4:]), head)
        else:
            self.not_found(head)

    def find_repo(self, repo_id: str, head: bool) -> Repo | None:
        repo = self.endpoint.repos.get(repo_id)
        if repo is None:
            self.send_hub_error(HTTPStatus.NOT_FOUND, "RepoNotFound", "Repository not found", head)
        return repo

    def find_commit(self, repo: Repo, revision: str, head: bool) -> str | None:
        commit = repo.commit_for(revision)
        if commit is None:
            message = f"Invalid rev id: {revision}"
            self.send_hub_error(HTTPStatus.NOT_FOUND, "RevisionNotFound", message, head)
        return commit

    def api(self, repo_id: str, rest: list[str], query: dict[str, list[str]], head: bool) -> None:
        repo = self.find_repo(repo_id, head)
        if repo is None:
            return
        if not rest or rest[0] == "revision":
            commit = self.find_commit(repo, rest[1] if len(rest) > 1 else "main", head)
            if commit is not None:
                blobs = _flag(query, "blobs")
                self.send_json(HTTPStatus.OK, model_info(repo, blobs), head)
        elif rest[0] == "tree" and len(rest) >= 2:
            commit = self.find_commit(repo, rest[1], head)
            if commit is not None:
                listing = tree(repo, "/".join(rest[2:]), _flag(query, "recursive"))
                self.send_json(HTTPStatus.OK, listing, head)
        else:
            self.not_found(head)

    def resolve(self, repo_id: str, revision: str, path: str, head: bool) -> None:
        repo = self.find_repo(repo_id, head)
        if repo is None or not self.allowed(repo, head):
            return
        commit = self.find_commit(repo, revision, head)
        if commit is None:
            return
        file = repo.files.get(path)
        if file is None:
            self.send_hub_error(
                HTTPStatus.NOT_FOUND,
                "EntryNotFound",
                "Entry not found",
                head,
                {"X-Repo-Commit": commit},
            )
            return
        if not file.lfs:
            headers = {"ETag": f'"{file.etag}"', "X-Repo-Commit": commit}
            self.send_file(repo, file, headers, head)
            return
        # The host the client reached the hub by (an address a pod can reach), the CDN's port.
        host = urlsplit(f"http://{self.headers.get('Host', self.endpoint.host)}").hostname
        cdn = f"http://{host}:{self.endpoint.cdn_port}"
        location = f"{cdn}/{repo_id}/{commit}/{quote(path)}"
        self.send_response(HTTPStatus.FOUND)
        for name, value in {
            "Location": location,
            "ETag": f'"{file.etag}"',
            "X-Linked-Etag": f'"{file.sha256}"',
            "X-Linked-Size": str(file.size),
            "X-Repo-Commit": commit,
            "Content-Length": "0",
        }.items():
            self.send_header(name, value)
        self.end_headers()

    def allowed(self, repo: Repo, head: bool) -> bool:
        """A gated repository's files need a token on its list, as the hub answers them."""
        if repo.gated_tokens is None:
            return True
        authorization = self.headers.get("Authorization", "")
        token = authorization.removeprefix("Bearer ").strip() if authorization else ""
        if token in repo.gated_tokens:
            return True
        if not token:
            message = (
                f"Access to model {repo.repo_id} is restricted. You must have access to it "
                "and be authenticated to access it. Please log in."
            )
            self.send_hub_error(HTTPStatus.UNAUTHORIZED, "GatedRepo", message, head)
        else:
            message = (
                f"Access to model {repo.repo_id} is restricted and you are not in the "
                f"authorized list. Visit {self.endpoint.url}/{repo.repo_id} to ask for access."
            )
            self.send_hub_error(HTTPStatus.FORBIDDEN, "GatedRepo", message, head)
        return False


class _CdnHandler(_Handler):
    """`/ORG/NAME/COMMIT/PATH`: where the hub's LFS redirects point."""

    def route(self, segments: list[str], query: dict[str, list[str]], head: bool) -> None:
        repo = self.endpoint.repos.get("/".join(segments[:2]))
        file = repo.files.get("/".join(segments[3:])) if repo is not None else None
        if repo is None or file is None or segments[2] != repo.commit:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": "not found"}, head)
            return
        self.send_file(repo, file, {"ETag": f'"{file.sha256}"'}, head)


def model_info(repo: Repo, blobs: bool) -> dict[str, Any]:
    org = repo.repo_id.split("/")[0]
    return {
        "_id": repo.commit[:24],
        "id": repo.repo_id,
        "modelId": repo.repo_id,
        "author": org,
        "sha": repo.commit,
        "lastModified": "2025-01-01T00:00:00.000Z",
        "createdAt": "2025-01-01T00:00:00.000Z",
        "private": False,
        "disabled": False,
        "gated": "manual" if repo.gated else False,
        "downloads": 0,
        "likes": 0,
        "library_name": "diffusers",
        "pipeline_tag": "text-to-image",
        "tags": ["diffusers", "safetensors", "text-to-image"],
        "siblings": [file.sibling(blobs) for file in repo.files.values()],
    }


def tree(repo: Repo, folder: str, recursive: bool) -> list[dict[str, Any]]:
    """The files and folders under `folder` (directly, or at any depth when recursive)."""
    prefix = f"{folder}/" if folder else ""
    entries: list[dict[str, Any]] = []
    folders: set[str] = set()
    for file in repo.files.values():
        if not file.path.startswith(prefix):
            continue
        parts = file.path[len(prefix) :].split("/")
        for depth in range(1, len(parts)):
            if depth > 1 and not recursive:
                break
            folders.add(prefix + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            entries.append(file.tree_entry())
    for name in sorted(folders):
        oid = hashlib.sha1(name.encode()).hexdigest()
        entries.append({"type": "directory", "oid": oid, "size": 0, "path": name})
    return entries


def _flag(query: dict[str, list[str]], name: str) -> bool:
    return query.get(name, ["false"])[-1].lower() in ("1", "true")


def _range_start(header: str | None, size: int) -> int | None:
    """The N of `Range: bytes=N-` (or `bytes=N-M`: the client only ever asks to the end)."""
    if not header or not header.startswith("bytes="):
        return None
    start = header.removeprefix("bytes=").split("-", 1)[0]
    return int(start) if start.isdigit() and int(start) < size else None


def _parse_repo(text: str) -> tuple[str, Path]:
    repo_id, _, directory = text.partition("=")
    if repo_id.count("/") != 1 or not directory:
        raise argparse.ArgumentTypeError(f"expected ORG/NAME=DIR, got {text!r}")
    return repo_id, Path(directory)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m support.hf_endpoint",
        description="Serve directories as Hugging Face model repositories until stopped.",
    )
    parser.add_argument("repos", nargs="+", type=_parse_repo, metavar="ORG/NAME=DIR")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="the hub's port (0: any free one)")
    parser.add_argument("--cdn-port", type=int, default=0, help="the CDN's port (0: any free one)")
    parser.add_argument("--gated-token", action="append", default=None, help="gate every repo")
    parser.add_argument(
        "--failure", choices=["500", "hang"], default=None, help="fail every request"
    )
    parser.add_argument(
        "--chunk-delay", type=float, default=0.0, help="seconds to wait before each 64 KiB sent"
    )
    args = parser.parse_args(argv)
    hub = HubEndpoint(
        host=args.host,
        port=args.port,
        cdn_port_asked=args.cdn_port,
        failure=args.failure,
        chunk_delay=args.chunk_delay,
    )
    for repo_id, directory in args.repos:
        hub.add_repo(repo_id, directory, set(args.gated_token) if args.gated_token else None)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with hub:
        print(json.dumps({"url": hub.url, "cdn_url": hub.cdn_url}), flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()


if __name__ == "__main__":
    main()
