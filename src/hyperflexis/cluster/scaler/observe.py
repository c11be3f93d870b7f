"""What the scaler observes: demand and service over a sliding window, fed by the driver.

The driver reports arrivals, finishes and load snapshots with its own `now`; `observe(now)` turns
the window into an `Observation`: per-bin rates of prompt tokens and expected output tokens with
their trends, arrival rates and TPOT targets by SLO class, observed attainment, and the pools'
latest snapshots (KV usage, decodes by tightest TPOT, pending prefills).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from hyperflexis.cluster.dispatcher import DispatchRequest
from hyperflexis.cluster.scaler.forecast import ZERO_TREND, Trend, fit_trend
from hyperflexis.cluster.snapshot import LoadSnapshot
from hyperflexis.scheduler.config import Role


class FinishedRequest(Protocol):
    """What the scaler reads of a finished request (`bench.metrics.RequestRecord` is one)."""

    @property
    def slo_class(self) -> str: ...

    @property
    def num_output_tokens(self) -> int: ...

    @property
    def attained(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class _Arrival:
    time_s: float
    slo_class: str
    num_prompt_tokens: int
    max_tokens: int
    tpot_s: float
    ttft_s: float


@dataclass(frozen=True, slots=True)
class _Finish:
    time_s: float
    slo_class: str
    num_output_tokens: int
    attained: bool


@dataclass(frozen=True, slots=True)
class Observation:
    """The window's demand and service at `time_s`."""

    time_s: float  # when it was taken
    covered_s: float  # seconds of the window that have been observed (less at start-up)
    prefill_tokens: Trend  # prompt tokens arriving per second
    decode_tokens: Trend  # output tokens the arrivals will ask for, per second
    arrival_rate_by_class: Mapping[str, float]  # requests/s per SLO class
    tpot_by_class: Mapping[str, float]  # TPOT target per SLO class seen in the window
    mean_prompt_tokens: float  # per arrival; 0 without arrivals
    mean_output_tokens: float  # expected per arrival; 0 without arrivals
    mean_decode_context_tokens: float  # of the decodes running now, else estimated from lengths
    mean_ttft_s: float  # the arrivals' mean first-token target; 0 without arrivals
    attainment: float | None  # attained / finished in the window; None when nothing finished
    num_finished: int  # finishes in the window
    snapshots_by_role: Mapping[Role, tuple[LoadSnapshot, ...]] = field(default_factory=dict)

    @property
    def tightest_tpot_s(self) -> float | None:
        """Tightest TPOT target among the window's arrivals and the decodes running now."""
        running = [
            s.tightest_tpot_s
            for snapshots in self.snapshots_by_role.values()
            for s in snapshots
            if s.decode_features.num_decodes > 0
        ]
        candidates = [*self.tpot_by_class.values(), *running]
        return min(candidates) if candidates else None

    def kv_usage(self, role: Role) -> float | None:
        """Mean KV usage of the role's instances; None without snapshots."""
        snapshots = self.snapshots_by_role.get(role, ())
        return sum(s.kv_usage for s in snapshots) / len(snapshots) if snapshots else None

    def decodes_by_tightest_tpot(self) -> dict[float, int]:
        """Concurrent decodes, grouped by the tightest TPOT on their instance (the TPOT that
        bounds their steps)."""
        counts: dict[float, int] = {}
        for snapshots in self.snapshots_by_role.values():
            for s in snapshots:
                if s.decode_features.num_decodes > 0:
                    tpot = s.tightest_tpot_s
                    counts[tpot] = counts.get(tpot, 0) + s.decode_features.num_decodes
        return counts

    def num_waiting(self, role: Role) -> int:
        return sum(s.num_waiting for s in self.snapshots_by_role.get(role, ()))


def queue_laxity_s(snapshot: LoadSnapshot, now: float, tokens_per_s: float) -> float | None:
    """Least slack among an instance's pending prefills served earliest-deadline-first at
    `tokens_per_s`: negative when one will miss its first-token deadline. None when none wait."""
    if not snapshot.pending_prefills:
        return None
    if tokens_per_s <= 0:
        return -math.inf
    elapsed_s = 0.0
    laxity = math.inf
    for pending in sorted(snapshot.pending_prefills, key=lambda p: p.deadline_s):
        elapsed_s += pending.work_tokens / tokens_per_s
        laxity = min(laxity, pending.deadline_s - now - elapsed_s)
    return laxity


def late_work_tokens(snapshot: LoadSnapshot, now: float, tokens_per_s: float) -> int:
    """Prompt tokens of an instance's pending prefills that will miss their first-token deadline
    served earliest-deadline-first at `tokens_per_s`. A prefill that misses is set aside, as the
    instance scheduler moves it to its late set (served best effort), so it does not make the
    ones behind it late too: this is the work the instance cannot do on time, not its queue."""
    if tokens_per_s <= 0:
        return sum(p.work_tokens for p in snapshot.pending_prefills)
    elapsed_s = 0.0
    late = 0
    for pending in sorted(snapshot.pending_prefills, key=lambda p: p.deadline_s):
        finish_s = elapsed_s + pending.work_tokens / tokens_per_s
        if pending.deadline_s - now < finish_s:
            late += pending.work_tokens
        else:
            elapsed_s = finish_s
    return late


class DemandObserver:
    """Sliding-window record of arrivals, finishes and snapshots. Times are the driver's."""

    def __init__(
        self, window_s: float = 60.0, bin_s: float = 5.0, min_bins_for_slope: int = 4
    ) -> None:
        if not window_s > 0:
            raise ValueError(f"invalid 'window_s': must be > 0, got {window_s}")
        if not 0 < bin_s <= window_s:
            raise ValueError(f"invalid 'bin_s': must be in (0, window_s], got {bin_s}")
        self.window_s = window_s  # how far back demand is measured
        self.bin_s = bin_s  # width of one rate sample for the trend fit
        self.min_bins_for_slope = min_bins_for_slope  # fewer bins: no trend, just the mean
        self._arrivals: deque[_Arrival] = deque()
        self._finishes: deque[_Finish] = deque()
        self._snapshots: dict[str, LoadSnapshot] = {}
        self._first_s: float | None = None  # first report: rates before it are unknown, not 0

    def observe_arrival(self, now: float, request: DispatchRequest) -> None:
        self._start(now)
        self._arrivals.append(
            _Arrival(
                now,
                request.slo.class_name,
                request.num_prompt_tokens,
                request.max_tokens,
                request.slo.tpot_s,
                request.slo.ttft_s,
            )
        )

    def observe_finish(self, now: float, record: FinishedRequest) -> None:
        self._start(now)
        self._finishes.append(
            _Finish(now, record.slo_class, record.num_output_tokens, record.attained)
        )

    def observe_snapshots(self, now: float, snapshots: Iterable[LoadSnapshot]) -> None:
        """Latest snapshot per instance; an instance gone from the cluster is `forget`-ten."""
        self._start(now)
        for snapshot in snapshots:
            self._snapshots[snapshot.instance_id] = snapshot

    def forget(self, keep_ids: Iterable[str]) -> None:
        """Drop snapshots of instances not in `keep_ids` (stopped instances)."""
        keep = set(keep_ids)
        for instance_id in [i for i in self._snapshots if i not in keep]:
            del self._snapshots[instance_id]

    def observe(self, now: float) -> Observation:
        self._expire(now)
        covered_s = 0.0 if self._first_s is None else min(self.window_s, now - self._first_s)
        output_by_class = self._mean_output_by_class()
        arrivals = list(self._arrivals)
        expected = [output_by_class.get(a.slo_class, float(a.max_tokens)) for a in arrivals]
        prefill = self._trend(now, covered_s, [(a.time_s, a.num_prompt_tokens) for a in arrivals])
        decode = self._trend(
            now, covered_s, [(a.time_s, e) for a, e in zip(arrivals, expected, strict=True)]
        )
        rate_by_class: dict[str, float] = {}
        tpot_by_class: dict[str, float] = {}
        for a in arrivals:
            rate_by_class[a.slo_class] = rate_by_class.get(a.slo_class, 0.0) + 1.0
            tpot_by_class[a.slo_class] = min(tpot_by_class.get(a.slo_class, math.inf), a.tpot_s)
        rate_by_class = {
            c: n / covered_s if covered_s > 0 else 0.0 for c, n in sorted(rate_by_class.items())
        }
        mean_prompt = sum(a.num_prompt_tokens for a in arrivals) / len(arrivals) if arrivals else 0
        mean_output = sum(expected) / len(expected) if expected else 0.0
        mean_ttft = sum(a.ttft_s for a in arrivals) / len(arrivals) if arrivals else 0.0
        by_role: dict[Role, list[LoadSnapshot]] = {}
        for snapshot in sorted(self._snapshots.values(), key=lambda s: s.instance_id):
            by_role.setdefault(snapshot.role, []).append(snapshot)
        num_decodes = sum(s.decode_features.num_decodes for s in self._snapshots.values())
        if num_decodes:
            decode_ctx = (
                sum(s.decode_features.decode_ctx_tokens for s in self._snapshots.values())
                / num_decodes
            )
        else:  # a decode's context grows from the prompt to prompt + output: half way on average
            decode_ctx = mean_prompt + mean_output / 2
        finishes = list(self._finishes)
        attainment = sum(f.attained for f in finishes) / len(finishes) if finishes else None
        return Observation(
            time_s=now,
            covered_s=covered_s,
            prefill_tokens=prefill,
            decode_tokens=decode,
            arrival_rate_by_class=rate_by_class,
            tpot_by_class=dict(sorted(tpot_by_class.items())),
            mean_prompt_tokens=float(mean_prompt),
            mean_output_tokens=mean_output,
            mean_decode_context_tokens=decode_ctx,
            mean_ttft_s=mean_ttft,
            attainment=attainment,
            num_finished=len(finishes),
            snapshots_by_role={role: tuple(s) for role, s in by_role.items()},
        )

    def _start(self, now: float) -> None:
        if self._first_s is None:
            self._first_s = now

    def _expire(self, now: float) -> None:
        horizon = now - self.window_s
        while self._arrivals and self._arrivals[0].time_s <= horizon:
            self._arrivals.popleft()
        while self._finishes and self._finishes[0].time_s <= horizon:
            self._finishes.popleft()

    def _mean_output_by_class(self) -> dict[str, float]:
        """Mean output length of completed requests per class; rejected ones (0 tokens) say
        nothing about how long requests of their class decode."""
        totals: dict[str, tuple[int, int]] = {}
        for f in self._finishes:
            if f.num_output_tokens > 0:
                total, count = totals.get(f.slo_class, (0, 0))
                totals[f.slo_class] = (total + f.num_output_tokens, count + 1)
        return {c: total / count for c, (total, count) in totals.items()}

    def _trend(self, now: float, covered_s: float, events: list[tuple[float, float]]) -> Trend:
        """Rate of `(time_s, amount)` events per bin over the covered window, fitted."""
        if covered_s <= 0:
            return ZERO_TREND
        num_bins = int(covered_s // self.bin_s)
        if num_bins == 0:  # less than one bin observed: one partial bin
            rate = sum(amount for _, amount in events) / covered_s
            return fit_trend([rate], covered_s)
        sums = [0.0] * num_bins
        for time_s, amount in events:
            age = int((now - time_s) // self.bin_s)
            if age < num_bins:
                sums[num_bins - 1 - age] += amount
        return fit_trend([s / self.bin_s for s in sums], self.bin_s, self.min_bins_for_slope)
