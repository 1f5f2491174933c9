"""The `tti-operator` command: run the operator against the cluster in KUBECONFIG or in-cluster.

The operator's one start-up path (the image's entry point, the chart's pod, the tests'
`python -m tti_operator.cli`): settings from flags and environment, kopf configured, the
`Controller` built and handed to kopf's handlers in its memo, then `kopf.run`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import kopf
from pydantic import ValidationError

from tti_kube.client import KubeClient
from tti_operator import handlers
from tti_operator.controller import Controller
from tti_operator.settings import OperatorSettings

LOG_FORMATS = {
    "json": kopf.LogFormat.JSON,
    "plain": kopf.LogFormat.PLAIN,
    "full": kopf.LogFormat.FULL,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="tti-operator",
        description=(
            "Reconcile TextToImageModel resources (tti.dev/v1alpha1) into Deployments and "
            "Services of the tti-server image. Every option also reads TTI_OPERATOR_<NAME>; "
            "credentials come from the pod's service account or from KUBECONFIG."
        ),
    )
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="serve this namespace (repeatable; env TTI_OPERATOR_NAMESPACES=a,b); "
        "default: all namespaces",
    )
    parser.add_argument("--server-image", help="default server image (TTI_OPERATOR_SERVER_IMAGE)")
    parser.add_argument(
        "--liveness-port", type=int, help="kopf liveness endpoint port, 0 for none (8081)"
    )
    parser.add_argument("--log-format", choices=sorted(LOG_FORMATS), help="log format (json)")
    parser.add_argument("-v", "--verbose", action="store_true", default=None, help="debug logs")
    return parser.parse_args(argv)


def load_settings(args: argparse.Namespace) -> OperatorSettings:
    """Flags over environment variables over defaults, validated once."""
    overrides = {
        name: value
        for name, value in vars(args).items()
        if value is not None and name in OperatorSettings.model_fields
    }
    return OperatorSettings.model_validate(overrides)


def configure_logging(ours: OperatorSettings) -> None:
    kopf.configure(verbose=ours.verbose, log_format=LOG_FORMATS[ours.log_format])
    if not ours.verbose:
        # kopf says "Handler 'model_event' succeeded" for every event of every model, most
        # of them the echoes of the operator's own status patches: lines that say nothing.
        # Its warnings and errors about a model still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        ours = load_settings(args)
    except ValidationError as error:
        first = error.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        print(f"tti-operator: invalid setting {field}: {first['msg']}", file=sys.stderr)
        return 2
    configure_logging(ours)
    settings = kopf.OperatorSettings()
    handlers.configure(settings, ours)
    liveness = f"http://0.0.0.0:{ours.liveness_port}/healthz" if ours.liveness_port else None
    kopf.run(
        settings=settings,
        standalone=True,
        clusterwide=not ours.namespaces,
        namespaces=ours.namespaces,
        liveness_endpoint=liveness,
        memo=kopf.Memo(controller=Controller(ours, KubeClient(ours.field_manager))),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
