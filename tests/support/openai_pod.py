"""OpenAI image requests from a pod, for real-pod tests: a script run by the server image's
own Python (standard library only: the image has no `openai` package), and what it printed.

Each request is posted to `URL/v1/images/generations`; for each, the pod prints one JSON
line: the HTTP status, the event types of a streamed answer (in order), the SHA-256 of the
final image's bytes, and the error's details for an error answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from support.realpods import Release, pod_finished, start_python_pod

SCRIPT = r"""
import base64, hashlib, json, sys, urllib.error, urllib.request

url, requests = sys.argv[1], json.loads(sys.argv[2])


def post(body):
    request = urllib.request.Request(
        url + "/v1/images/generations", json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    try:
        return urllib.request.urlopen(request, timeout=240)
    except urllib.error.HTTPError as error:
        return error


for body in requests:
    answer = post(body)
    seen = {"status": answer.status, "events": [], "image": None, "details": None}
    if answer.status != 200:
        seen["details"] = json.loads(answer.read()).get("details")
    elif body.get("stream"):
        for line in answer:
            if line.startswith(b"data: "):
                event = json.loads(line[6:])
                seen["events"].append(event["type"])
                if event["type"] == "image_generation.completed":
                    image = base64.b64decode(event["b64_json"])
                    seen["image"] = hashlib.sha256(image).hexdigest()
    else:
        image = base64.b64decode(json.loads(answer.read())["data"][0]["b64_json"])
        seen["image"] = hashlib.sha256(image).hexdigest()
    print(json.dumps(seen), flush=True)
"""


@dataclass(frozen=True)
class Answer:
    status: int
    events: list[str]
    image: str | None
    details: str | None


def openai_from_pod(release: Release, url: str, *requests: dict[str, Any]) -> list[Answer]:
    """Post `requests` in order from one pod of the models' namespace; what each got."""
    pod = start_python_pod(release, "openai", SCRIPT, url, json.dumps(list(requests)))
    lines = pod_finished(release, pod).strip().splitlines()[-len(requests) :]
    return [Answer(**json.loads(line)) for line in lines]
