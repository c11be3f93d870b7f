"""Benchmarking: SLO metrics shared by the simulator and the live load client, reports, plots."""

from hyperflexis.bench.metrics import (
    RecordStatus,
    RequestRecord,
    attainment_at,
    check_conservation,
    goodput_at,
    latency_stats,
    rate_where_falls_to,
    record_from_request,
    summarize,
)

__all__ = [
    "RecordStatus",
    "RequestRecord",
    "attainment_at",
    "check_conservation",
    "goodput_at",
    "latency_stats",
    "rate_where_falls_to",
    "record_from_request",
    "summarize",
]
