"""`tti`: a small command-line client for a tti-server.

tti generate "a red fox in the snow" --url http://localhost:8080 -o fox.png
tti generate "a red fox in the snow" --grpc localhost:8085 --model-id stub -o fox.png

HTTP needs only the standard library; `--grpc` speaks caikit's gRPC API with the
stubs generated from the package's protos.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMATS = ("png", "jpeg", "webp")
_FORMAT_BY_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}


class ClientError(Exception):
    """A failure worth one line on stderr."""


@dataclass(frozen=True)
class GenerateOptions:
    prompt: str
    height: int | None = None
    width: int | None = None
    steps: int | None = None
    image_format: str = "png"
    seed: int | None = None
    model_id: str | None = None
    #: A bearer token, for a gateway with auth on.
    api_key: str | None = None


def generate(url: str, options: GenerateOptions, timeout: float = 300.0) -> bytes:
    """Ask the caikit endpoint for raw image bytes; raise `ClientError` with the server's reason."""
    parameters: dict[str, Any] = {"image_format": options.image_format}
    for name, value in (
        ("height", options.height),
        ("width", options.width),
        ("num_steps", options.steps),
        ("seed", options.seed),
    ):
        if value is not None:
            parameters[name] = value
    body: dict[str, Any] = {"inputs": options.prompt, "parameters": parameters}
    if options.model_id:
        body["model_id"] = options.model_id
    headers = {"Content-Type": "application/json", "Accept": f"image/{options.image_format}"}
    if options.api_key:
        headers["Authorization"] = f"Bearer {options.api_key}"
    request = urllib.request.Request(
        url.rstrip("/") + "/api/v1/task/text-to-image",
        data=json.dumps(body).encode(),
        headers=headers,
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data: bytes = response.read()
            return data
    except urllib.error.HTTPError as exc:
        raise ClientError(f"server answered {exc.code}: {_error_details(exc)}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ClientError(f"cannot reach {url}: {reason}") from None


def generate_grpc(target: str, options: GenerateOptions, timeout: float = 300.0) -> bytes:
    """Call caikit's `TextToImageTaskPredict` at host:port; raise `ClientError` with the reason."""
    if not options.model_id:
        raise ClientError("--grpc needs --model-id: caikit's gRPC API names the model")
    if options.seed is not None:
        raise ClientError("--seed is not part of caikit's gRPC request; use HTTP for it")
    import grpc

    import tti_server.grpc_api  # noqa: F401  (puts the generated modules on sys.path)
    import computervisionservice_pb2_grpc  # isort: skip
    from ccv import texttoimagetaskrequest_pb2  # isort: skip

    fields = {"height": options.height, "width": options.width, "num_steps": options.steps}
    request = texttoimagetaskrequest_pb2.TextToImageTaskRequest(
        inputs=options.prompt,
        image_format=options.image_format,
        **{name: value for name, value in fields.items() if value is not None},
    )
    metadata = [("mm-model-id", options.model_id)]
    with grpc.insecure_channel(target) as channel:
        stub = computervisionservice_pb2_grpc.ComputerVisionServiceStub(channel)
        try:
            answer = stub.TextToImageTaskPredict(request, metadata=metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise ClientError(f"server answered {exc.code().name}: {exc.details()}") from None
    image: bytes = answer.output.image_data
    return image


def _error_details(exc: urllib.error.HTTPError) -> str:
    """The `details` of the server's error envelope, or the raw body when there is none."""
    raw = exc.read().decode(errors="replace")
    try:
        return str(json.loads(raw)["details"])
    except (ValueError, KeyError, TypeError):
        return raw.strip()[:200] or exc.reason


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tti", description="Talk to a tti-server.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    gen = commands.add_parser("generate", help="generate one image into a file")
    gen.add_argument("prompt", help="what to draw")
    gen.add_argument("--url", default="http://localhost:8080", help="server base URL")
    gen.add_argument(
        "--grpc", metavar="HOST:PORT", help="use caikit's gRPC API there instead (needs --model-id)"
    )
    gen.add_argument("--height", type=int, help="pixels (rounded to a multiple of 8)")
    gen.add_argument("--width", type=int, help="pixels (rounded to a multiple of 8)")
    gen.add_argument("--steps", type=int, help="denoising steps")
    gen.add_argument("--seed", type=int, help="the same seed gives the same image")
    gen.add_argument("--format", choices=FORMATS, help="image format (default: from -o, else png)")
    gen.add_argument("--model-id", help="the served model's name (checked by the server)")
    gen.add_argument("--timeout", type=float, default=300.0, help="seconds to wait")
    gen.add_argument(
        "--api-key",
        default=os.environ.get("TTI_API_KEY"),
        help="bearer token for a gateway with auth on (default: $TTI_API_KEY)",
    )
    gen.add_argument("-o", "--output", type=Path, default=Path("out.png"), help="file to write")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    image_format = args.format or _FORMAT_BY_SUFFIX.get(args.output.suffix.lower(), "png")
    options = GenerateOptions(
        prompt=args.prompt,
        height=args.height,
        width=args.width,
        steps=args.steps,
        image_format=image_format,
        seed=args.seed,
        model_id=args.model_id,
        api_key=args.api_key,
    )
    try:
        if args.grpc:
            image = generate_grpc(args.grpc, options, args.timeout)
        else:
            image = generate(args.url, options, args.timeout)
        args.output.write_bytes(image)
    except ClientError as exc:
        sys.exit(f"tti: error: {exc}")
    except OSError as exc:
        sys.exit(f"tti: error: cannot write {args.output}: {exc.strerror or exc}")
    print(f"wrote {args.output} ({len(image)} bytes, {image_format})")


if __name__ == "__main__":
    main()
