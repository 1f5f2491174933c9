"""`tti-server`: serve a model, `tti-server make-tiny-model DIR`, `tti-server make-tiny-adapter
DIR` or `tti-server download REPO`.

Every flag is a `Settings` field, so flags, `TTI_*` variables and `--help` never drift.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import types
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tti_server import __version__
from tti_server.settings import Settings

PROG = "tti-server"
_EPILOG = """\
Every flag can also be set as an environment variable: --max-queue is TTI_MAX_QUEUE.
Flags win over variables, variables over defaults.

other commands:
  tti-server make-tiny-model DIR   write a tiny random-weight pipeline of a model family
                                   (offline; for tests; --help lists the families)
  tti-server make-tiny-adapter DIR write a tiny random LoRA adapter for the tiny pipeline
                                   (offline; for tests; --help)
  tti-server download REPO ...     fetch a pipeline from a Hugging Face hub into a cache (--help)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Serve a text-to-image model over caikit- and OpenAI-compatible HTTP APIs "
        "and caikit's gRPC API.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for name, info in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        choices = _literal_choices(info.annotation)
        default = "none" if info.default is None else info.default
        parser.add_argument(
            flag,
            dest=name,
            type=_scalar_type(info.annotation),
            choices=choices,
            metavar=None if choices else name.upper(),
            help=f"{info.description} (default: {default}; env TTI_{name.upper()})",
        )
    return parser


def build_tiny_model_parser() -> argparse.ArgumentParser:
    from tti_server.tools.tiny_model import FAMILIES

    parser = argparse.ArgumentParser(
        prog=f"{PROG} make-tiny-model",
        description="Write a tiny random-weight pipeline of a model family (a few MB) with no "
        "network. It loads like the real model but draws noise, not pictures.",
    )
    parser.add_argument("directory", type=Path, help="where to write the pipeline")
    parser.add_argument(
        "--family",
        choices=list(FAMILIES),
        default="sdxl",
        help="the family whose real pipeline, classes and scheduler it has (default: %(default)s)",
    )
    return parser


def build_tiny_adapter_parser() -> argparse.ArgumentParser:
    from tti_server.tools.tiny_adapter import FAMILIES

    parser = argparse.ArgumentParser(
        prog=f"{PROG} make-tiny-adapter",
        description="Write a tiny random LoRA adapter (peft, saved by diffusers) for a tiny "
        "pipeline of `make-tiny-model`, with no network. It changes the images; another "
        "seed changes them differently.",
    )
    parser.add_argument("directory", type=Path, help="where to write the adapter")
    parser.add_argument("--family", choices=FAMILIES, default="sdxl", help="(default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["make-tiny-model"]:
        sys.exit(make_tiny_model(args[1:]))
    if args[:1] == ["make-tiny-adapter"]:
        sys.exit(make_tiny_adapter(args[1:]))
    if args[:1] == ["download"]:
        from tti_server.weights import run_download

        sys.exit(run_download(args[1:]))
    sys.exit(serve(args))


def load_settings(argv: Sequence[str]) -> Settings:
    """Parse flags over the environment; bad values exit 2 with one line per problem."""
    parser = build_parser()
    flags = vars(parser.parse_args(argv))
    try:
        return Settings(**flags)
    except ValidationError as exc:
        parser.error("; ".join(_describe(error) for error in exc.errors()))


def serve(argv: Sequence[str]) -> int:
    import uvicorn

    settings = load_settings(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    failure: list[str] = []
    server: uvicorn.Server | None = None

    def stop_on_load_failure(message: str) -> None:
        failure.append(message)
        if server is not None:
            server.should_exit = True

    from tti_http.limits import limited_protocol
    from tti_server.app import create_app
    from tti_server.gc_tuning import settle_after_load
    from tti_server.service import Service

    service = Service(settings, on_load_failure=stop_on_load_failure, on_ready=settle_after_load)
    config = uvicorn.Config(
        create_app(settings, service=service),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=max(5, int(settings.request_timeout)),
        http=limited_protocol(settings.client_limits()),
    )
    server = uvicorn.Server(config)
    try:
        with asyncio.Runner(loop_factory=config.get_loop_factory()) as runner:
            runner.run(_serve_both(server, service))
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after a clean shutdown
        return 130
    if failure:
        print(f"{PROG}: error: {failure[0]}", file=sys.stderr)
        return 1
    return 0 if server.started else 1


async def _serve_both(server: Any, service: Any) -> None:
    """HTTP (uvicorn) and gRPC on one event loop over one service; the service loads the model.

    uvicorn handles the signals: when it has drained HTTP, gRPC gets the same grace,
    then the engine stops.
    """
    settings = service.settings
    grpc_server = None
    if settings.grpc_port:
        from tti_server.grpc_api.server import start_grpc_server

        grpc_server = await start_grpc_server(
            service, settings.host, settings.grpc_port, settings.client_limits()
        )
    service.start()
    try:
        await server.serve()
    finally:
        if grpc_server is not None:
            await grpc_server.stop(grace=max(5.0, settings.request_timeout))
        await service.stop()


def make_tiny_model(argv: Sequence[str]) -> int:
    args = build_tiny_model_parser().parse_args(argv)
    from tti_server.tools.tiny_model import write_tiny_model

    try:
        write_tiny_model(args.directory, args.family)
    except Exception as exc:
        print(
            f"{PROG}: error: cannot write the tiny model to {args.directory}: {exc}",
            file=sys.stderr,
        )
        return 1
    print(f"wrote a tiny {args.family} pipeline to {args.directory}")
    return 0


def make_tiny_adapter(argv: Sequence[str]) -> int:
    args = build_tiny_adapter_parser().parse_args(argv)
    from tti_server.tools.tiny_adapter import write_tiny_adapter

    try:
        written = write_tiny_adapter(args.directory, args.family, args.seed)
    except Exception as exc:
        print(
            f"{PROG}: error: cannot write the tiny adapter to {args.directory}: {exc}",
            file=sys.stderr,
        )
        return 1
    print(f"wrote a tiny {args.family} LoRA adapter to {written}")
    return 0


def _describe(error: Any) -> str:
    """`--max-queue (TTI_MAX_QUEUE): Input should be ...`: the flag and the variable."""
    name = ".".join(map(str, error["loc"]))
    return f"--{name.replace('_', '-')} (TTI_{name.upper()}): {error['msg']}"


def _literal_choices(annotation: Any) -> list[str] | None:
    if typing.get_origin(annotation) is typing.Literal:
        return [str(choice) for choice in typing.get_args(annotation)]
    return None


def _scalar_type(annotation: Any) -> Callable[[str], Any]:
    """int, float or str; `X | None` counts as X."""
    if isinstance(annotation, types.UnionType):
        annotation = next(a for a in typing.get_args(annotation) if a is not type(None))
    return int if annotation is int else float if annotation is float else str


if __name__ == "__main__":
    main()
