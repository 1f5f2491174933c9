"""The request metrics' exposition: Prometheus counters and histograms as scrapers read them."""

from __future__ import annotations

from tti_server.metrics import ServerMetrics


def exposition(metrics: ServerMetrics) -> list[str]:
    return [line for line in metrics.render().decode().splitlines() if not line.startswith("#")]


def test_requests_are_counted_per_route_method_and_status() -> None:
    metrics = ServerMetrics(lambda: None)
    for status in (200, 200, 503):
        metrics.observe("/api/v1/task/text-to-image", "POST", status, 0.01)
    lines = exposition(metrics)
    route = 'route="/api/v1/task/text-to-image"'
    assert f'tti_requests_total{{method="POST",{route},status="200"}} 2.0' in lines
    assert f'tti_requests_total{{method="POST",{route},status="503"}} 1.0' in lines


def test_latency_buckets_are_cumulative_and_a_bound_belongs_to_its_own_bucket() -> None:
    metrics = ServerMetrics(lambda: None)
    for seconds in (0.001, 0.005, 0.3, 75.0):  # 0.005 is exactly the first bound
        metrics.observe("/health", "GET", 200, seconds)
    lines = exposition(metrics)
    bucket = 'tti_request_duration_seconds_bucket{{le="{}",route="/health"}} {}'
    assert bucket.format("0.005", 2.0) in lines
    assert bucket.format("0.25", 2.0) in lines
    assert bucket.format("0.5", 3.0) in lines
    assert bucket.format("60.0", 3.0) in lines
    assert bucket.format("+Inf", 4.0) in lines
    assert 'tti_request_duration_seconds_count{route="/health"} 4.0' in lines
    assert 'tti_request_duration_seconds_sum{route="/health"} 75.306' in lines
    assert not any("_created" in line for line in lines)


def test_the_engine_series_read_zero_before_the_model_is_loaded() -> None:
    lines = exposition(ServerMetrics(lambda: None))
    assert "tti_queue_depth 0.0" in lines
    assert "tti_ready 0.0" in lines
