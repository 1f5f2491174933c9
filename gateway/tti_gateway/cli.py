"""`tti-gateway`: every flag is a `GatewaySettings` field.

`--hold-timeout` is also the variable `TTI_GATEWAY_HOLD_TIMEOUT`; flags win over variables.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence

from pydantic import ValidationError
from pydantic_core import PydanticUndefined

from tti_gateway import __version__
from tti_gateway.settings import GatewaySettings

PROG = "tti-gateway"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="One HTTP endpoint for every text-to-image model: routes by model name, "
        "holds requests while a model starts.",
        epilog="Every flag is also a variable: --hold-timeout is TTI_GATEWAY_HOLD_TIMEOUT.",
        argument_default=argparse.SUPPRESS,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    for name, info in GatewaySettings.model_fields.items():
        default = "none" if info.default in (None, PydanticUndefined) else info.default
        parser.add_argument(
            "--" + name.replace("_", "-"),
            dest=name,
            metavar=name.upper(),
            help=f"{info.description} (default: {default}; env TTI_GATEWAY_{name.upper()})",
        )
    return parser


def load_settings(argv: Sequence[str]) -> GatewaySettings:
    """Flags over the environment; a bad value exits 2 with one line naming the flag."""
    parser = build_parser()
    flags = vars(parser.parse_args(argv))
    try:
        return GatewaySettings(**flags)
    except ValidationError as exc:
        problems = (
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}" for e in exc.errors()
        )
        parser.error("; ".join(problems))


def main(argv: Sequence[str] | None = None) -> None:
    import uvicorn

    from tti_gateway.app import create_app, create_metrics_app
    from tti_http.limits import limited_protocol

    settings = load_settings(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        app = create_app(settings)
        clients = listen(settings.host, settings.port)
        metrics = listen(settings.host, settings.metrics_port)
    except (OSError, ValueError) as exc:  # a tokens file, no credentials, a port in use
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    limits = settings.client_limits()
    # One server on two sockets: a connection to the metrics port gets the metrics app.
    metrics_port = metrics.getsockname()[1]
    protocol = limited_protocol(limits, {metrics_port: create_metrics_app(app.state.gateway)})
    # No proxy-headers rewriting: the gateway passes its client's address on as it sees it.
    config = uvicorn.Config(
        app, log_level=settings.log_level, access_log=False, proxy_headers=False, http=protocol
    )
    logging.getLogger(PROG).info(
        "clients on %s:%d, /metrics on port %d",
        settings.host,
        clients.getsockname()[1],
        metrics_port,
    )
    uvicorn.Server(config).run(sockets=[clients, metrics])


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError as exc:
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
