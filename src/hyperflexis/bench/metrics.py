"""SLO metrics of a run: one record per offered request, and the summary every report is built on.

The simulator and the live load client both produce `RequestRecord`s, so their numbers mean the
same thing. A request is attained when it completed and met its TTFT and its mean TPOT; rejected,
aborted and failed requests count as offered and not attained (DESIGN.md §2). Beside it, every
summary judges the per-token view (`core.slo.token_lateness_s`: token i due by arrival +
TTFT SLO + i x TPOT SLO) as `*_per_token` keys. Summaries are plain
dicts of floats, ints and None with classes in sorted order, so the same records give the same
JSON byte for byte, in whatever order the records came.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, overload

import numpy as np

from hyperflexis.core.request import FinishReason, Request
from hyperflexis.core.slo import mean_tpot_s

RecordStatus = Literal["completed", "rejected", "aborted", "failed"]
STATUSES: tuple[RecordStatus, ...] = ("completed", "rejected", "aborted", "failed")

# FinishReason -> status for records made from engine requests; PREFILLED is not an end from the
# client's side (decode continues elsewhere), so it has no status.
_STATUS_OF_REASON: dict[FinishReason, RecordStatus] = {
    FinishReason.STOP: "completed",
    FinishReason.LENGTH: "completed",
    FinishReason.REJECTED: "rejected",
    FinishReason.ABORTED: "aborted",
    FinishReason.ERROR: "failed",
}

PERCENTILES = (50, 90, 99)  # the p-keys of every latency summary


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What happened to one offered request; times are seconds on the run's clock."""

    request_id: str
    slo_class: str  # SLO class name, for per-class metrics
    priority: int  # the class priority (0 is the most important)
    ttft_slo_s: float  # TTFT target
    tpot_slo_s: float  # mean TPOT target
    arrival_s: float  # when the request was sent / arrived
    first_token_s: float | None  # when its first output token came; None if it never did
    finish_s: float | None  # when it ended (last token, rejection, abort); None if unknown
    num_prompt_tokens: int
    num_output_tokens: int  # output tokens received
    status: RecordStatus
    # Gaps between streamed chunks, for ITL plots (stored as a tuple); TPOT comes from the first
    # token and the finish instead, since a chunk may carry several tokens.
    inter_token_latencies_s: Sequence[float] | None = None
    instance: str | None = None  # the instance it was first sent to; None if never dispatched
    max_itl_s: float | None = None  # largest gap between two output tokens (chunks, live)
    # Largest `core.slo.token_lateness_s` of its output tokens (<= 0: all on time); a live
    # client counts a chunk as one token, which can only make it later. None without output.
    max_token_lateness_s: float | None = None
    finish_reason: str | None = None  # "stop"/"length", or why it ended ("rejected", "abort", ...)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"invalid RequestRecord field 'status': {self.status!r}")
        for name in ("ttft_slo_s", "tpot_slo_s"):
            value = getattr(self, name)
            if not _finite(value) or value <= 0:
                raise ValueError(
                    f"invalid RequestRecord field {name!r}: expected > 0, got {value!r}"
                )
        for name in ("num_prompt_tokens", "num_output_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(
                    f"invalid RequestRecord field {name!r}: expected >= 0, got {value!r}"
                )
        if not _finite(self.arrival_s):
            raise ValueError(f"invalid RequestRecord field 'arrival_s': {self.arrival_s!r}")
        for name in ("first_token_s", "finish_s"):
            value = getattr(self, name)
            if value is not None and (not _finite(value) or value < self.arrival_s):
                raise ValueError(
                    f"invalid RequestRecord field {name!r}: expected >= arrival_s "
                    f"({self.arrival_s}), got {value!r}"
                )
        first, finish = self.first_token_s, self.finish_s
        if first is not None and finish is not None and finish < first:
            raise ValueError(
                f"invalid RequestRecord field 'finish_s': {finish} is before first_token_s {first}"
            )
        if self.status == "completed" and (
            first is None or finish is None or self.num_output_tokens < 1
        ):
            raise ValueError(
                f"invalid RequestRecord {self.request_id!r}: a completed request needs "
                "first_token_s, finish_s and num_output_tokens >= 1"
            )
        if self.max_itl_s is not None and not (_finite(self.max_itl_s) and self.max_itl_s >= 0):
            raise ValueError(f"invalid RequestRecord field 'max_itl_s': {self.max_itl_s!r}")
        if self.max_token_lateness_s is not None and not _finite(self.max_token_lateness_s):
            raise ValueError(
                f"invalid RequestRecord field 'max_token_lateness_s': {self.max_token_lateness_s!r}"
            )
        if self.inter_token_latencies_s is not None:
            itls = tuple(float(x) for x in self.inter_token_latencies_s)
            if any(not math.isfinite(x) or x < 0 for x in itls):
                raise ValueError("invalid RequestRecord field 'inter_token_latencies_s': need >= 0")
            object.__setattr__(self, "inter_token_latencies_s", itls)

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def attained_per_token(self) -> bool:
        """Completed with every output token by its per-token deadline."""
        lateness = self.max_token_lateness_s
        return self.status == "completed" and lateness is not None and lateness <= 0

    @property
    def tpot_s(self) -> float | None:
        """Mean TPOT (`core.slo.mean_tpot_s`); None with fewer than two tokens."""
        return mean_tpot_s(self.first_token_s, self.finish_s, self.num_output_tokens)

    @property
    def e2e_s(self) -> float | None:
        return None if self.finish_s is None else self.finish_s - self.arrival_s

    @property
    def attained(self) -> bool:
        """Completed, within its TTFT target and (with two or more tokens) its mean TPOT."""
        ttft, tpot = self.ttft_s, self.tpot_s
        return (
            self.status == "completed"
            and ttft is not None
            and ttft <= self.ttft_slo_s
            and (tpot is None or tpot <= self.tpot_slo_s)
        )


def record_from_request(request: Request) -> RequestRecord:
    """The record of a finished engine `Request` (as the simulator keeps them)."""
    reason = request.finish_reason
    if not request.is_finished or reason is None:
        raise ValueError(f"request {request.request_id!r} has not finished")
    if reason not in _STATUS_OF_REASON:
        raise ValueError(f"request {request.request_id!r} ended as {reason.value!r}: not final")
    return RequestRecord(
        request_id=request.request_id,
        slo_class=request.slo.class_name,
        priority=request.slo.priority,
        ttft_slo_s=request.slo.ttft_s,
        tpot_slo_s=request.slo.tpot_s,
        arrival_s=request.arrival_s,
        first_token_s=request.first_token_s,
        finish_s=request.finish_s,
        num_prompt_tokens=request.num_prompt_tokens,
        num_output_tokens=request.num_output_tokens,
        status=_STATUS_OF_REASON[reason],
        max_itl_s=request.max_itl_s,
        max_token_lateness_s=request.max_token_lateness_s,
        finish_reason=reason.value,
    )


@overload
def delivered_after(record: RequestRecord, latency_s: float) -> RequestRecord: ...
@overload
def delivered_after(record: None, latency_s: float) -> None: ...


def delivered_after(record: RequestRecord | None, latency_s: float) -> RequestRecord | None:
    """The record as a client sees it when every output (each token, the end) reaches it
    `latency_s` after the engine made it: the response path outside the engine (the server
    relaying the step, the stream, the network, the OS waking each process on the way).
    None (only checks `latency_s`) gives None."""
    if not (_finite(latency_s) and latency_s >= 0):
        raise ValueError(f"invalid response latency {latency_s!r}: expected a finite number >= 0")
    if record is None or latency_s == 0:
        return record

    def later(value: float | None) -> float | None:
        return None if value is None else value + latency_s

    return dataclasses.replace(
        record,
        first_token_s=later(record.first_token_s),
        finish_s=later(record.finish_s),
        max_token_lateness_s=later(record.max_token_lateness_s),
    )


def summarize(
    records: Sequence[RequestRecord], duration_s: float, instance_seconds: float = 0.0
) -> dict[str, Any]:
    """The run's SLO metrics over its offered requests.

    Keys: `num_requests` (offered), `num_attained`, `num_completed`, `num_rejected`, `attainment`
    (attained / offered; 0.0 when nothing was offered), `attainment_by_class`, `counts_by_class`
    (class -> `num_requests`, `num_attained`, `num_completed`, `num_rejected`, and
    `num_missed_ttft` / `num_missed_tpot`: completed over that target), `ttft_s`, `tpot_s`,
    `e2e_s` (each `p50`, `p90`, `p99`, `mean` over the completed requests that have the value;
    all None without data; percentiles interpolate linearly), `max_itl_s` (the same over each
    request's largest gap), `goodput_rps` (attained requests per second of `duration_s`) and
    `instance_seconds` (the cost, passed through). Under per-token deadlines:
    `num_attained_per_token`, `attainment_per_token`, `attainment_per_token_by_class`,
    `goodput_per_token_rps` (and `num_attained_per_token` per class).
    """
    if not _finite(duration_s) or duration_s <= 0:
        raise ValueError(f"invalid parameter 'duration_s': expected > 0, got {duration_s!r}")
    if not _finite(instance_seconds) or instance_seconds < 0:
        raise ValueError(
            f"invalid parameter 'instance_seconds': expected >= 0, got {instance_seconds!r}"
        )
    _check_unique(records)
    completed = [r for r in records if r.status == "completed"]
    counts = _counts(records)
    by_class = {
        name: _counts([r for r in records if r.slo_class == name])
        for name in sorted({r.slo_class for r in records})
    }
    return {
        "num_requests": counts["num_requests"],
        "num_attained": counts["num_attained"],
        "num_completed": counts["num_completed"],
        "num_rejected": counts["num_rejected"],
        "attainment": _fraction(counts),
        "attainment_by_class": {name: _fraction(c) for name, c in by_class.items()},
        "num_attained_per_token": counts["num_attained_per_token"],
        "attainment_per_token": _fraction(counts, "num_attained_per_token"),
        "attainment_per_token_by_class": {
            name: _fraction(c, "num_attained_per_token") for name, c in by_class.items()
        },
        "counts_by_class": by_class,
        "ttft_s": latency_stats(r.ttft_s for r in completed),
        "tpot_s": latency_stats(r.tpot_s for r in completed),
        "e2e_s": latency_stats(r.e2e_s for r in completed),
        "max_itl_s": latency_stats(r.max_itl_s for r in completed),
        "goodput_rps": counts["num_attained"] / float(duration_s),
        "goodput_per_token_rps": counts["num_attained_per_token"] / float(duration_s),
        "instance_seconds": float(instance_seconds),
    }


def latency_stats(values: Iterable[float | None]) -> dict[str, float | None]:
    """`p50`, `p90`, `p99` and `mean` of the values that are not None (all None if none are)."""
    data = sorted(v for v in values if v is not None)
    keys = [f"p{p}" for p in PERCENTILES] + ["mean"]
    if not data:
        return dict.fromkeys(keys)
    percentiles = np.percentile(np.asarray(data, dtype=np.float64), PERCENTILES)
    stats: dict[str, float | None] = {
        f"p{p}": float(v) for p, v in zip(PERCENTILES, percentiles, strict=True)
    }
    stats["mean"] = math.fsum(data) / len(data)  # fsum: exact, so independent of record order
    return stats


def check_conservation(offered_ids: Iterable[str], records: Iterable[RequestRecord]) -> None:
    """Raise ValueError unless every offered request has exactly one record and no record is for
    a request that was not offered: a lost or double-counted request would bias attainment."""
    offered: set[str] = set()
    for request_id in offered_ids:
        if request_id in offered:
            raise ValueError(f"conservation: request {request_id!r} was offered twice")
        offered.add(request_id)
    seen: set[str] = set()
    for record in records:
        if record.request_id in seen:
            raise ValueError(f"conservation: request {record.request_id!r} is recorded twice")
        if record.request_id not in offered:
            raise ValueError(f"conservation: request {record.request_id!r} was never offered")
        seen.add(record.request_id)
    missing = sorted(offered - seen)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5])
        more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise ValueError(f"conservation: {len(missing)} request(s) have no record: {shown}{more}")


def goodput_at(attainments_by_rate: Iterable[tuple[float, float]], target: float = 0.9) -> float:
    """The highest rate that keeps attainment >= `target`, from a rate sweep.

    Walks the rates upwards to the first one that fails; the answer lies between it and the last
    passing rate, interpolated linearly. A later rate that passes again (noise) does not count, so
    the figure is conservative. All passing: the highest rate. The lowest already failing: 0.
    """
    _check_level(target, "target")
    points = _sorted_points(attainments_by_rate)
    for i, (rate, attainment) in enumerate(points):
        if attainment < target:
            if i == 0:
                return 0.0
            return _crossing(points[i - 1], (rate, attainment), target)
    return points[-1][0]


def rate_where_falls_to(
    attainments_by_rate: Iterable[tuple[float, float]], level: float = 0.5
) -> float | None:
    """The rate, interpolated linearly, where attainment first falls to `level` or below; the
    lowest rate if it is already there, None if it never gets there in the sweep."""
    _check_level(level, "level")
    points = _sorted_points(attainments_by_rate)
    for i, (rate, attainment) in enumerate(points):
        if attainment <= level:
            if i == 0:
                return rate
            return _crossing(points[i - 1], (rate, attainment), level)
    return None


def attainment_at(attainments_by_rate: Iterable[tuple[float, float]], rate: float) -> float | None:
    """Attainment at `rate`, interpolated linearly in a sweep; None outside the swept rates.
    (To compare systems where a baseline falls to 50%: `attainment_at(ours, rate_where_falls_to(
    baseline))`.)"""
    points = _sorted_points(attainments_by_rate)
    rates = [p[0] for p in points]
    if not _is_number(rate) or not rates[0] <= rate <= rates[-1]:
        return None
    return float(np.interp(rate, rates, [p[1] for p in points]))


def _counts(records: Sequence[RequestRecord]) -> dict[str, int]:
    return {
        "num_requests": len(records),
        "num_attained": sum(r.attained for r in records),
        "num_attained_per_token": sum(r.attained_per_token for r in records),
        "num_completed": sum(r.status == "completed" for r in records),
        "num_rejected": sum(r.status == "rejected" for r in records),
        # Completed requests over each target (one over both counts in both): which SLO a
        # class misses on, the first question when its attainment drops.
        "num_missed_ttft": sum(r.status == "completed" and _over_ttft(r) for r in records),
        "num_missed_tpot": sum(r.status == "completed" and _over_tpot(r) for r in records),
    }


def _over_ttft(record: RequestRecord) -> bool:
    ttft = record.ttft_s
    return ttft is not None and ttft > record.ttft_slo_s


def _over_tpot(record: RequestRecord) -> bool:
    tpot = record.tpot_s
    return tpot is not None and tpot > record.tpot_slo_s


def _fraction(counts: dict[str, int], key: str = "num_attained") -> float:
    return counts[key] / counts["num_requests"] if counts["num_requests"] else 0.0


def _check_unique(records: Sequence[RequestRecord]) -> None:
    seen: set[str] = set()
    for record in records:
        if record.request_id in seen:
            raise ValueError(f"invalid records: request {record.request_id!r} appears twice")
        seen.add(record.request_id)


def _sorted_points(points: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    result = sorted((float(rate), float(attainment)) for rate, attainment in points)
    if not result:
        raise ValueError("invalid parameter 'attainments_by_rate': no points")
    for rate, attainment in result:
        if not math.isfinite(rate) or rate < 0:
            raise ValueError(f"invalid parameter 'attainments_by_rate': rate {rate}")
        if not 0.0 <= attainment <= 1.0:
            raise ValueError(f"invalid parameter 'attainments_by_rate': attainment {attainment}")
    for (r0, _), (r1, _) in itertools.pairwise(result):
        if r0 == r1:
            raise ValueError(f"invalid parameter 'attainments_by_rate': rate {r0} appears twice")
    return result


def _crossing(above: tuple[float, float], below: tuple[float, float], level: float) -> float:
    """Where the segment from `above` to `below` meets `level`; the callers guarantee that the
    first attainment is above `level` and the second is not, so the two differ."""
    (r0, a0), (r1, a1) = above, below
    return r0 + (a0 - level) / (a0 - a1) * (r1 - r0)


def _check_level(value: Any, name: str) -> None:
    if not _is_number(value) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"invalid parameter {name!r}: expected a fraction in [0, 1], got {value!r}"
        )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)
