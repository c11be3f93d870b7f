"""Live against simulated, request for request (`benchmarks/fidelity.py`, issue 18 item 7).

The same workload runs on the live server and in the simulator; both runs' per-request records
are summarised by the same code (`bench.recompute.recompute`), and this module sets the two
summaries side by side: per rate and SLO class, attainment (the difference in points) and the
p50 and p90 of TTFT and TPOT (the simulator's relative error against the live figure). The
targets: attainment within `attainment_points` at every rate, and every latency figure within
`latency_rel` (goal `latency_goal_rel`) at the rates below the knee, those at which the live run
attains at least `knee_attainment` overall.

The live instances' step times are read from their online corrections (`GET /debug/instances`,
`step_ratio_moments`: per kind of step, count, sum and sum of squares of measured/predicted);
two readings around a run give that run's mean ratio and coefficient of variation, per kind or
pooled (`step_spread`). The simulated twin plans with the profile scaled by the live instances'
correction factor (what their schedulers plan with) and charges each step that factor times the
kind's mean over it, with the kind's CV as noise (`twin_noise`).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hyperflexis.perf.nnls import nnls
from hyperflexis.perf.profiled import (
    NUM_COEFFICIENTS,
    ProfiledCostModel,
    ProfileSample,
    read_profile,
    write_profile,
)

# (summary key, statistic) of each latency figure compared, and its column name.
LATENCY_FIGURES = (
    ("ttft_s", "p50", "TTFT p50"),
    ("ttft_s", "p90", "TTFT p90"),
    ("tpot_s", "p50", "TPOT p50"),
    ("tpot_s", "p90", "TPOT p90"),
)
ALL = "all"  # the row of every class together


@dataclass(frozen=True, slots=True)
class Targets:
    attainment_points: float = 3.0  # |sim - live| attainment, percentage points, every rate
    latency_rel: float = 0.10  # |sim - live| / live of each latency figure, below the knee
    latency_goal_rel: float = 0.05
    knee_attainment: float = 0.9  # below the knee: the live run attains at least this


@dataclass(frozen=True, slots=True)
class StepSpread:
    """Steps' measured / predicted time over a window: how many, their mean and CV."""

    num_steps: int
    mean: float
    cv: float


Moments = tuple[int, float, float]  # (count, sum, sum of squares)
InstanceMoments = dict[str, dict[str, Moments]]  # instance -> kind of step -> moments
_NONE: Moments = (0, 0, 0)


def moments_by_instance(rows: Iterable[Mapping[str, Any]]) -> InstanceMoments:
    """Each live instance's `step_ratio_moments` (per kind of step) from `/debug/instances`."""
    moments: InstanceMoments = {}
    for row in rows:
        raw = row.get("step_ratio_moments")
        if row.get("alive") and isinstance(raw, Mapping):
            moments[str(row["instance_id"])] = {
                str(kind): (int(m[0]), float(m[1]), float(m[2])) for kind, m in raw.items()
            }
    return moments


def step_spread(
    before: InstanceMoments, after: InstanceMoments, kind: str | None = None
) -> StepSpread:
    """The steps of `kind` (None: every kind) taken between two readings, pooled over the
    instances. An instance whose count went down restarted in between: its steps since the
    restart are counted from zero."""
    count, total, total_sq = 0, 0.0, 0.0
    for instance, kinds in after.items():
        for name, (n, s, ss) in kinds.items():
            if kind is not None and name != kind:
                continue
            n0, s0, ss0 = before.get(instance, {}).get(name, _NONE)
            if n < n0:
                n0, s0, ss0 = _NONE
            count, total, total_sq = count + n - n0, total + s - s0, total_sq + ss - ss0
    if count < 2:
        raise ValueError(f"only {count} steps between the readings: no spread to take")
    mean = total / count
    variance = max(total_sq / count - mean * mean, 0.0)
    return StepSpread(count, mean, math.sqrt(variance) / mean)


@dataclass(frozen=True, slots=True)
class TwinNoise:
    """What the simulated twin charges against its (scaled) profile: `sim.StepNoise`'s fields."""

    cv: float
    bias: float
    decode_cv: float | None = None
    decode_bias: float | None = None


def twin_noise(
    plan_factor: float,
    pooled: StepSpread,
    prefill: StepSpread | None = None,
    decode: StepSpread | None = None,
) -> TwinNoise:
    """Step noise for a twin that plans with the profile x `plan_factor`: each kind's measured
    mean over that factor as its bias, its CV as noise; without the kinds, the pooled figures
    for every step."""
    if not (math.isfinite(plan_factor) and plan_factor > 0):
        raise ValueError(f"invalid plan factor {plan_factor}: must be finite and > 0")
    if prefill is None or decode is None:
        return TwinNoise(pooled.cv, pooled.mean / plan_factor - 1)
    return TwinNoise(
        prefill.cv, prefill.mean / plan_factor - 1, decode.cv, decode.mean / plan_factor - 1
    )


def scaled_profile(source: str | Path, factor: float, target: str | Path) -> Path:
    """A copy of the profile at `source` whose fitted model predicts `factor` x the original
    (what a live instance's online correction plans with once it has settled)."""
    if not (math.isfinite(factor) and factor > 0):
        raise ValueError(f"invalid profile scale {factor}: must be finite and > 0")
    profile = read_profile(source)
    c0, c1, c2, c3, c4 = (c * factor for c in profile.coefficients)
    model = ProfiledCostModel((c0, c1, c2, c3, c4))
    meta: dict[str, Any] = {"model": profile.model, "device": profile.device}
    meta["dtype"] = profile.dtype
    meta.update(profile.meta)
    meta["scaled_from"] = {"path": str(source), "factor": factor}
    samples = [ProfileSample(s.prefills, s.decodes, s.step_s * factor) for s in profile.samples]
    write_profile(target, samples, model, meta)
    return Path(target)


def write_refit(profile: str | Path, model: ProfiledCostModel, target: str | Path) -> Path:
    """The refitted model as a profile file (the simulator reads models from those), with the
    profile's own samples (its error field is then the refit's error on the profiled grid)."""
    source = read_profile(profile)
    meta = {"model": source.model, "device": source.device, "dtype": source.dtype}
    write_profile(target, source.samples, model, {**meta, "refit_on_live_steps": True})
    return Path(target)


@dataclass(frozen=True, slots=True)
class ClassComparison:
    """One class (or `ALL`) at one rate: (live, simulated) of each figure."""

    slo_class: str
    num_requests: int
    attainment: tuple[float, float]
    latencies_s: dict[str, tuple[float | None, float | None]]  # by LATENCY_FIGURES name

    @property
    def attainment_gap_points(self) -> float:
        live, sim = self.attainment
        return (sim - live) * 100

    def relative_errors(self) -> dict[str, float | None]:
        """(sim - live) / live per figure; None where either side has no figure."""
        return {name: relative_error(*pair) for name, pair in self.latencies_s.items()}


@dataclass(frozen=True, slots=True)
class PointComparison:
    rate_rps: float
    rows: tuple[ClassComparison, ...]  # the classes in order, then ALL
    below_knee: bool  # the latency targets apply


def relative_error(live: float | None, sim: float | None) -> float | None:
    if live is None or sim is None or live <= 0:
        return None
    return (sim - live) / live


def compare_point(
    rate_rps: float,
    live: Mapping[str, Any],
    sim: Mapping[str, Any],
    targets: Targets = Targets(),
) -> PointComparison:
    """Two `bench.recompute.recompute` summaries of the same workload, side by side."""
    live_classes, sim_classes = live["latency_by_class"], sim["latency_by_class"]
    if set(live_classes) != set(sim_classes):
        raise ValueError(f"classes differ: live {sorted(live_classes)}, sim {sorted(sim_classes)}")
    rows = [
        _class_row(name, live_classes[name], sim_classes[name]) for name in sorted(live_classes)
    ]
    rows.append(_class_row(ALL, live, sim))
    return PointComparison(rate_rps, tuple(rows), live["attainment"] >= targets.knee_attainment)


def _class_row(name: str, live: Mapping[str, Any], sim: Mapping[str, Any]) -> ClassComparison:
    if live["num_requests"] != sim["num_requests"]:
        raise ValueError(
            f"class {name}: {live['num_requests']} live requests, {sim['num_requests']} simulated"
        )
    latencies = {label: (live[key][stat], sim[key][stat]) for key, stat, label in LATENCY_FIGURES}
    return ClassComparison(
        name, live["num_requests"], (live["attainment"], sim["attainment"]), latencies
    )


def verdict(points: Sequence[PointComparison], targets: Targets = Targets()) -> dict[str, Any]:
    """The worst attainment gap over every rate and row, the worst latency error over the rates
    below the knee (with where each is), and whether each target is met."""
    gaps = [(abs(r.attainment_gap_points), p.rate_rps, r.slo_class) for p in points for r in p.rows]
    errors = [
        (abs(error), p.rate_rps, r.slo_class, name)
        for p in points
        if p.below_knee
        for r in p.rows
        for name, error in r.relative_errors().items()
        if error is not None
    ]
    worst_gap = max(gaps, default=(0.0, None, None))
    worst_error = max(errors, default=(0.0, None, None, None))
    return {
        "worst_attainment_gap_points": worst_gap[0],
        "worst_attainment_gap_at": {"rate_rps": worst_gap[1], "slo_class": worst_gap[2]},
        "attainment_met": worst_gap[0] <= targets.attainment_points,
        "rates_below_knee": [p.rate_rps for p in points if p.below_knee],
        "worst_latency_error": worst_error[0],
        "worst_latency_error_at": dict(
            zip(("rate_rps", "slo_class", "figure"), worst_error[1:], strict=True)
        ),
        "latency_met": bool(errors) and worst_error[0] <= targets.latency_rel,
        "latency_goal_met": bool(errors) and worst_error[0] <= targets.latency_goal_rel,
        "share_of_latency_figures_within_target": (
            sum(e[0] <= targets.latency_rel for e in errors) / len(errors) if errors else None
        ),
    }


def markdown_table(points: Sequence[PointComparison]) -> str:
    """One row per rate and class: attainment live / sim (gap), then each latency figure in ms
    as live / sim (error); rates below the knee are marked."""
    names = [label for _, _, label in LATENCY_FIGURES]
    lines = [
        "| rate (req/s) | class | requests | attainment live / sim (gap) | "
        + " | ".join(f"{n} ms live / sim (error)" for n in names)
        + " |",
        "|---:|---|---:|---|" + "---|" * len(names),
    ]
    for point in points:
        rate = f"{point.rate_rps:g}" + ("" if point.below_knee else " (past knee)")
        for row in point.rows:
            live, sim = row.attainment
            cells = [f"{live:.1%} / {sim:.1%} ({row.attainment_gap_points:+.1f})"]
            errors = row.relative_errors()
            for name in names:
                cells.append(_latency_cell(*row.latencies_s[name], errors[name]))
            lines.append(f"| {rate} | {row.slo_class} | {row.num_requests} | " + " | ".join(cells))
            lines[-1] += " |"
    return "\n".join(lines)


def _latency_cell(live: float | None, sim: float | None, error: float | None) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1e3:.1f}"

    return f"{ms(live)} / {ms(sim)}" + ("" if error is None else f" ({error:+.0%})")


def comparison_json(point: PointComparison) -> dict[str, Any]:
    """A point as plain JSON values, for results files."""
    return {
        "rate_rps": point.rate_rps,
        "below_knee": point.below_knee,
        "rows": [
            {
                "slo_class": row.slo_class,
                "num_requests": row.num_requests,
                "attainment_live": row.attainment[0],
                "attainment_sim": row.attainment[1],
                "latencies_s": {name: list(pair) for name, pair in row.latencies_s.items()},
                "relative_errors": row.relative_errors(),
            }
            for row in point.rows
        ],
    }


def response_latency(
    live_rows: Iterable[Mapping[str, Any]], sim_rows: Iterable[Mapping[str, Any]]
) -> float:
    """The response path a twin misses, as a light run shows it: the median over the requests
    with a first token in both runs of live minus simulated TTFT, at least 0 (per-request rows,
    `bench.records`, matched by `request_id`)."""
    simulated = {row["request_id"]: row.get("ttft_s") for row in sim_rows}
    gaps = [
        row["ttft_s"] - sim
        for row in live_rows
        if row.get("ttft_s") is not None and (sim := simulated.get(row["request_id"])) is not None
    ]
    if not gaps:
        raise ValueError("no request has a first token in both runs")
    return max(statistics.median(gaps), 0.0)


def fit_window(
    before: Iterable[Mapping[str, Any]], after: Iterable[Mapping[str, Any]]
) -> tuple[ProfiledCostModel, float]:
    """The linear latency model refitted on the live steps between two `/debug/instances`
    readings (their `step_fit_moments`: non-negative least squares on the measured times, pooled
    over the instances; one that restarted counts from zero), and its residual's spread over the
    mean step (the CV a multiplicative noise around it needs, to first order). Absolute, not the
    profile's relative, errors: under a CV near 1 a relative fit runs well below the mean."""
    n = NUM_COEFFICIENTS
    earlier = {str(r["instance_id"]): r.get("step_fit_moments") or [] for r in before}
    total = np.zeros(n * n + n + 2)
    for row in after:
        now = np.asarray(row.get("step_fit_moments") or [], dtype=np.float64)
        if not row.get("alive") or now.size != total.size:
            continue
        then = np.asarray(earlier.get(str(row["instance_id"])) or [0.0] * now.size)
        total += now - then if then.size == now.size and then[-1] <= now[-1] else now
    gram, sums = total[: n * n].reshape(n, n), total[n * n : n * n + n]
    squares, count = total[-2], total[-1]
    if count < 2 * n:
        raise ValueError(f"only {count:g} steps between the readings: too few to refit")
    used = np.flatnonzero(np.diag(gram) > 0)  # features no step had stay at 0
    scale = np.sqrt(np.diag(gram)[used])
    scaled = gram[np.ix_(used, used)] / np.outer(scale, scale)
    lower = np.linalg.cholesky(scaled + 1e-12 * np.eye(used.size))
    # min |X w - y|^2 = |L^T w - L^-1 c|^2 + const, with X^T X = L L^T and X^T y = c.
    target = np.asarray(np.linalg.solve(lower, sums[used] / scale), dtype=np.float64)
    solution = nnls(lower.T, target) / scale
    coefficients = np.zeros(n)
    coefficients[used] = np.maximum(solution, 0.0)
    c0, c1, c2, c3, c4 = (float(c) for c in coefficients)
    residual = squares - 2 * float(sums @ coefficients) + float(coefficients @ gram @ coefficients)
    mean_step_s = float(sums[0]) / count  # the first feature is 1
    cv = math.sqrt(max(residual, 0.0) / count) / mean_step_s
    return ProfiledCostModel((c0, c1, c2, c3, c4)), cv
