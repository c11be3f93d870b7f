"""What `hyperflexis bench` writes: the summary JSON, per-request JSON lines and a text table.

The summary holds the keys of `hyperflexis simulate` (`bench.metrics.summarize`, so a live run
and a simulated one compare key for key) and the keys of vLLM's `bench serve` result, so scripts
written for either read it unchanged. vLLM's conventions are kept for its keys: latencies in ms
over the completed requests, 0 when there are none, and per-request lists over every offered
request with 0 (and an error text) for those that did not complete.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hyperflexis.bench.client import BenchRun, RequestResult
from hyperflexis.bench.metrics import latency_stats, summarize
from hyperflexis.bench.recompute import latency_by_class
from hyperflexis.bench.records import record_row, write_rows

VLLM_LATENCY_METRICS = ("ttft", "tpot", "itl", "e2el")  # vLLM's names; ms in its keys


def bench_summary(run: BenchRun, instance_seconds: float = 0.0) -> dict[str, Any]:
    """The run's summary: simulate's keys, the client's own (`wall_s`, `num_failed`,
    `send_lag_s`, `server_overhead_ms`, `latency_by_class`), then vLLM's."""
    summary = summarize(run.records, run.duration_s, instance_seconds)
    summary.update(
        duration_s=run.duration_s,
        wall_s=run.wall_s,
        num_failed=sum(r.record.status == "failed" for r in run.results),
        # How late the client sent requests against their arrival times: an open-loop client
        # that falls behind offers less load than it claims.
        send_lag_s=latency_stats(r.record.arrival_s - r.spec.arrival_s for r in run.results),
        # The server's own per-request time, from the responses of servers that report it.
        server_overhead_ms=latency_stats(r.server_overhead_ms for r in run.results),
        latency_by_class=latency_by_class(run.records),
    )
    summary.update(vllm_metrics(run.results, run.duration_s))
    return summary


def vllm_metrics(results: Sequence[RequestResult], duration_s: float) -> dict[str, Any]:
    """The keys of vLLM's `bench serve` result JSON, computed as vLLM does."""
    done = [r for r in results if _ok(r)]
    input_tokens = sum(r.prompt_tokens for r in done)
    output_tokens = sum(r.record.num_output_tokens for r in done)
    samples_s: dict[str, list[float]] = {
        "ttft": [_value(r.record.ttft_s) for r in done],
        "tpot": [t for r in done if (t := r.record.tpot_s) is not None],
        "itl": [gap for r in done for gap in r.record.inter_token_latencies_s or ()],
        "e2el": [_value(r.record.e2e_s) for r in done],
    }
    metrics: dict[str, Any] = {
        "duration": duration_s,
        "completed": len(done),
        "total_input_tokens": input_tokens,
        "total_output_tokens": output_tokens,
        "request_throughput": len(done) / duration_s,
        "output_throughput": output_tokens / duration_s,
        "total_token_throughput": (input_tokens + output_tokens) / duration_s,
    }
    for name in VLLM_LATENCY_METRICS:
        metrics.update(_ms_stats(name, samples_s[name]))
    metrics.update(
        input_lens=[r.prompt_tokens for r in results],
        output_lens=[r.record.num_output_tokens if _ok(r) else 0 for r in results],
        ttfts=[_value(r.record.ttft_s) if _ok(r) else 0.0 for r in results],
        itls=[list(r.record.inter_token_latencies_s or ()) for r in results],
        generated_texts=[r.generated_text for r in results],
        errors=[r.error for r in results],
    )
    return metrics


def request_row(result: RequestResult) -> dict[str, Any]:
    """One JSON-lines record (`bench.records`): the record, then what the client asked and saw."""
    row = record_row(result.record)
    row.update(
        scheduled_s=result.spec.arrival_s,
        prompt_len=result.spec.prompt_len,
        output_len=result.spec.output_len,
        http_status=result.http_status,
        retry_after_s=result.retry_after_s,
        server_overhead_ms=result.server_overhead_ms,
        error=result.error,
    )
    row["itls_s"] = row["itls_s"] or []
    return row


def write_jsonl(results: Iterable[RequestResult], path: str | Path) -> None:
    write_rows((request_row(r) for r in results), path)


def class_table(summary: dict[str, Any]) -> str:
    """A text table per SLO class: attainment under mean TPOT and under per-token deadlines,
    rejections, TTFT p50/p90, TPOT p50, E2E p50 (ms)."""
    header = (
        f"{'class':<12} {'reqs':>5} {'attained':>9} {'per-token':>9} {'rejected':>8} "
        f"{'TTFT p50':>9} {'TTFT p90':>9} {'TPOT p50':>9} {'E2E p50':>9}"
    )
    lines = [header, "-" * len(header)]
    by_class = summary["latency_by_class"]
    counts = summary["counts_by_class"]
    for name, row in by_class.items():
        lines.append(
            f"{name:<12} {row['num_requests']:>5} {row['attainment']:>8.0%} "
            f"{row['attainment_per_token']:>8.0%} {counts[name]['num_rejected']:>8} "
            f"{_latencies(row)}"
        )
    lines.append("-" * len(header))
    lines.append(
        f"{'all':<12} {summary['num_requests']:>5} {summary['attainment']:>8.0%} "
        f"{summary['attainment_per_token']:>8.0%} {summary['num_rejected']:>8} "
        f"{_latencies(summary)}"
    )
    lines.append("(latencies in ms over completed requests)")
    return "\n".join(lines)


def _latencies(row: dict[str, Any]) -> str:
    return (
        f"{_ms(row['ttft_s']['p50']):>9} {_ms(row['ttft_s']['p90']):>9} "
        f"{_ms(row['tpot_s']['p50']):>9} {_ms(row['e2e_s']['p50']):>9}"
    )


def _ms_stats(name: str, samples_s: list[float]) -> dict[str, float]:
    data = np.asarray(samples_s, dtype=np.float64) * 1e3
    if data.size == 0:
        return {f"{k}_{name}_ms": 0.0 for k in ("mean", "median", "std", "p99")}
    return {
        f"mean_{name}_ms": float(np.mean(data)),
        f"median_{name}_ms": float(np.median(data)),
        f"std_{name}_ms": float(np.std(data)),
        f"p99_{name}_ms": float(np.percentile(data, 99)),
    }


def _ok(result: RequestResult) -> bool:
    return result.record.status == "completed"


def _value(seconds: float | None) -> float:
    return 0.0 if seconds is None else seconds


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None or not math.isfinite(seconds) else f"{seconds * 1e3:.0f}"
