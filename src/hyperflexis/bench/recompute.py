"""A run's summary recomputed from its per-request records alone (`hyperflexis report`).

A results file names its records file under `records` (a path relative to the results file);
a sweep's runs name one each. The run's length is recomputed too, by the rule both drivers use:
from 0 to the last request's end or the last scheduled arrival, whichever is later. The cost
(`instance_seconds`) is the run's, not a request's, and is taken from the results file.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hyperflexis.bench.metrics import RequestRecord, latency_stats, summarize

MIN_DURATION_S = 1e-9  # a run in which everything happened at once still has a length


def records_path(results_path: str | Path, doc: Mapping[str, Any]) -> Path:
    """Where the records of `doc` (a run in the results file at `results_path`) are."""
    name = doc.get("records")
    if not isinstance(name, str):
        raise ValueError(f"{results_path}: a run has no 'records' file")
    return Path(results_path).parent / name


def duration_from_rows(rows: Sequence[Mapping[str, Any]]) -> float:
    """From 0 to the last end or the last scheduled arrival (`sent_s` where none is kept)."""
    times = [MIN_DURATION_S]
    for row in rows:
        scheduled = row.get("scheduled_s", row.get("sent_s"))
        times += [t for t in (row.get("finish_s"), scheduled) if isinstance(t, (int, float))]
    return float(max(times))


def recompute(
    records: Sequence[RequestRecord], duration_s: float, instance_seconds: float
) -> dict[str, Any]:
    """`bench.metrics.summarize` of the records, `duration_s` and `latency_by_class`."""
    summary = summarize(records, duration_s, instance_seconds)
    summary["duration_s"] = duration_s
    summary["latency_by_class"] = latency_by_class(records)
    return summary


def latency_by_class(records: Sequence[RequestRecord]) -> dict[str, dict[str, Any]]:
    """Per SLO class (sorted): attainment in both TPOT views and the TTFT, TPOT and E2E stats of
    its completed requests, in seconds (`bench.metrics.latency_stats`)."""
    table: dict[str, dict[str, Any]] = {}
    for name in sorted({r.slo_class for r in records}):
        mine = [r for r in records if r.slo_class == name]
        done = [r for r in mine if r.status == "completed"]
        table[name] = {
            "num_requests": len(mine),
            "attainment": sum(r.attained for r in mine) / len(mine),
            "attainment_per_token": sum(r.attained_per_token for r in mine) / len(mine),
            "ttft_s": latency_stats(r.ttft_s for r in done),
            "tpot_s": latency_stats(r.tpot_s for r in done),
            "e2e_s": latency_stats(r.e2e_s for r in done),
        }
    return table


def differences(stored: Mapping[str, Any], recomputed: Mapping[str, Any]) -> list[str]:
    """The keys of `recomputed` that `stored` holds with another value (floats equal to 12
    significant digits, nested dicts compared whole); a key `stored` lacks is not compared."""
    return sorted(
        key for key, value in recomputed.items() if key in stored and not _same(stored[key], value)
    )


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        if isinstance(a, bool) or isinstance(b, bool):
            return a == b
        return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-15)
    return bool(a == b)
