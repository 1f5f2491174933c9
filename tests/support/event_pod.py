"""A pod that answers OpenAI's streamed image generation on cue, for the gateway's tests and
its streaming benchmark.

A real HTTP/1.1 server on loopback (the standard library's, one thread per connection):
`GET /readyz` answers 200, `POST /v1/images/generations` with `"stream": true` answers
server-sent events as the official `openai` client parses them (`partial_images` events
`image_generation.partial_image`, then one `image_generation.completed`), each event one
chunk of a chunked body; without `stream`, one JSON answer. What it does after its first
event is its `Pace`: events a fixed gap apart, wait until the test says its client saw the
first, stall until the connection is closed from the other end, or fail (an `error` event,
as a server sends when its model fails after the stream began). A tti-server cannot be made
to do that on cue.

Every event carries `sent_ns`, `time.monotonic_ns()` when the pod wrote it (the same
clock in every process of the machine), so that a client can tell how long it took.

    with EventPod(Pace.WAIT_FOR_CLIENT) as pod:
        ... pod.url ...; pod.first_seen.set()
"""

from __future__ import annotations

import base64
import json
import threading
import time
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

#: The longest a pod waits for a test's cue: a test that fails does not hang.
CUE_TIMEOUT_S = 30.0


class Pace(StrEnum):
    GAP = "gap"  # `gap` seconds between two events
    WAIT_FOR_CLIENT = "wait-for-client"  # after the first event, until `first_seen` is set
    STALL = "stall"  # after the first event, nothing, until the other end closes
    FAIL = "fail"  # after the first event, an error event, and the end


def event(kind: str, fields: dict[str, Any]) -> bytes:
    """One server-sent event: its name, then its data as one line of JSON."""
    data = json.dumps({"type": kind, **fields, "sent_ns": time.monotonic_ns()})
    return f"event: {kind}\ndata: {data}\n\n".encode()


def image_fields(payload: bytes) -> dict[str, Any]:
    return {
        "b64_json": base64.b64encode(payload).decode(),
        "background": "opaque",
        "created_at": int(time.time()),
        "output_format": "png",
        "quality": "auto",
        "size": "64x64",
    }


USAGE = {
    "input_tokens": 0,
    "input_tokens_details": {"image_tokens": 0, "text_tokens": 0},
    "output_tokens": 0,
    "total_tokens": 0,
}


class EventPod:
    """The server and what its handlers saw; a context manager that stops it."""

    def __init__(
        self, pace: Pace = Pace.GAP, gap: float = 0.0, payload_bytes: int = 64, port: int = 0
    ) -> None:
        self.pace, self.gap, self.payload_bytes = pace, gap, payload_bytes
        self.first_seen = threading.Event()  # set by a test once its client has event 0
        self.waited_for_client = False  # the pod went on because first_seen was set
        self.hung_up = threading.Event()  # the other end closed a connection mid-stream
        self.connections = 0  # those that carried a POST (not the gateway's probes)
        self.streams = 0
        self.plain = 0  # answers without "stream"
        self.streams_done = 0  # streams written to their end
        handler = type("Handler", (_Handler,), {"pod": self})
        self.server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> EventPod:
        return self

    def __exit__(
        self,
        _type: type[BaseException] | None,
        _exc: BaseException | None,
        _tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self.first_seen.set()  # a handler still waiting on its cue ends
        self.server.shutdown()
        self.server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    pod: EventPod

    def do_GET(self) -> None:  # /readyz, probed by the gateway
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        if not getattr(self, "posted", False):
            self.posted = True
            self.pod.connections += 1
        request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if request.get("stream"):
            self.pod.streams += 1
            self._stream(int(request.get("partial_images", 0)))
        else:
            self.pod.plain += 1
            self._plain()

    def _plain(self) -> None:
        body = json.dumps({"created": int(time.time()), "data": [{"b64_json": "AA=="}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def _stream(self, partial_images: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        payload = b"\x89PNG" + b"x" * max(0, self.pod.payload_bytes - 4)
        for index in range(partial_images):
            fields = {**image_fields(payload), "partial_image_index": index}
            self._chunk(event("image_generation.partial_image", fields))
            if not self._paced(index):
                return
        self._chunk(event("image_generation.completed", {**image_fields(payload), "usage": USAGE}))
        self.wfile.write(b"0\r\n\r\n")
        self.pod.streams_done += 1

    def _paced(self, index: int) -> bool:
        """Whether to go on after event `index`."""
        pod = self.pod
        if pod.pace is Pace.GAP:
            time.sleep(pod.gap)
        elif index == 0 and pod.pace is Pace.WAIT_FOR_CLIENT:
            pod.waited_for_client = pod.first_seen.wait(CUE_TIMEOUT_S)
        elif index == 0 and pod.pace is Pace.FAIL:
            error = {"message": "the model failed", "type": "server_error", "code": 500}
            self._chunk(event("error", {"error": error}))
            self.wfile.write(b"0\r\n\r\n")
            return False
        elif index == 0 and pod.pace is Pace.STALL:
            if self._closed_by_the_other_end():
                pod.hung_up.set()
            self.close_connection = True
            return False
        return True

    def _closed_by_the_other_end(self) -> bool:
        """Waits for the end of the connection: the other end sends nothing more on it."""
        self.connection.settimeout(CUE_TIMEOUT_S)
        try:
            data: bytes = self.connection.recv(1)
            return data == b""
        except TimeoutError:
            return False
        except ConnectionError:
            return True

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def log_message(self, *_args: object) -> None:
        pass
