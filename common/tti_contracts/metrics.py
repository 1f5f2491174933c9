"""The metric names one program exposes and another reads: the autoscaler scrapes the
model pods' and the gateway's `/metrics` (Prometheus text; counters end in `_total` there)."""

from __future__ import annotations

#: Model pod: requests in flight or queued now (HTTP and gRPC).
IN_FLIGHT = "tti_in_flight"
#: Model pod: the integral of `tti_in_flight` over time, in request-seconds (a counter).
REQUEST_LOAD = "tti_request_load_seconds"
#: Gateway: requests held for a model with no ready pod.
GATEWAY_HELD = "tti_gateway_held_requests"


def sample_name(counter: str) -> str:
    """A counter's name as its samples carry it in the text format."""
    return f"{counter}_total"
