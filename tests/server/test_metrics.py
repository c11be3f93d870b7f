"""The Prometheus text written by `ServerMetrics`."""

from __future__ import annotations

from hyperflexis.server.metrics import Counter, Histogram, ServerMetrics


def test_histogram_buckets_are_cumulative() -> None:
    histogram = Histogram("h_seconds", "help", (0.1, 1.0), ("slo_class",))
    for value in (0.05, 0.1, 0.5, 7.0):
        histogram.observe(value, "a")
    lines = list(histogram.render())
    assert lines[:2] == ["# HELP h_seconds help", "# TYPE h_seconds histogram"]
    assert lines[2:] == [
        'h_seconds_bucket{slo_class="a",le="0.1"} 2',
        'h_seconds_bucket{slo_class="a",le="1"} 3',
        'h_seconds_bucket{slo_class="a",le="+Inf"} 4',
        'h_seconds_sum{slo_class="a"} 7.65',
        'h_seconds_count{slo_class="a"} 4',
    ]


def test_counter_labels_are_escaped() -> None:
    counter = Counter("c_total", "help", ("slo_class",))
    counter.inc('we"ird\\')
    counter.inc('we"ird\\', amount=2)
    assert list(counter.render())[-1] == 'c_total{slo_class="we\\"ird\\\\"} 3'


def test_overhead_quantiles() -> None:
    metrics = ServerMetrics()
    assert metrics.overhead_quantiles_ms()["p50"] is None
    for ms in range(1, 101):
        metrics.observe_overhead(ms / 1000)
    quantiles = metrics.overhead_quantiles_ms()
    assert quantiles["count"] == 100 and quantiles["p50"] == 51.0 and quantiles["p99"] == 100.0
    assert "hyperflexis_server_overhead_seconds_count 100" in metrics.render([], 0)
