"""Scaler comparison (issue 6): the cost-aware `hyperflexis` scaler against `static` (provisioned
for the peak), `threshold` (an HPA-like reactive baseline) and `no-role-switch` (the ablation),
on Llama-3.1-8B / H100, collocated and P/D, in the elastic cluster simulator.

Scenarios (both seeded):
- `day`: the Azure LLM 2023 conversation trace's arrivals, time-scaled to `--minutes` and
  modulated by a day shape, `1 + (ratio - 1) * sin(pi t / T)^4` (a long night, a peak at noon;
  `--peak-ratio` 5 by default): every trace arrival is kept or duplicated a seeded random number
  of times with mean proportional to the shape, copies jittered within one mean trace gap.
- `shift`: synthetic Poisson arrivals at a constant rate whose lengths shift from prompt-heavy
  (long prompts, short answers) through a mix to decode-heavy (short prompts, long answers).

Every autoscaler starts from the smallest cluster (1 instance, or 1 prefill + 1 decode);
`static` runs the largest per-pool size `hyperflexis`, `no-role-switch` or `threshold` reached in
that scenario, the whole time (sized for the peak by the same runs). `no-role-switch` runs on
P/D only: on a collocated cluster it is `hyperflexis` exactly. `hyperflexis-lean` is the
same scaler with leaner settings (`--lean`; `--no-lean` skips it), to show the cost/attainment
trade-off of its knobs. `--sweep` adds, besides the default-setting rows, a few settings of
`hyperflexis` (`target_attainment`) and of `threshold` (its high marks and cooldown) and compares
them at matched cost: each `threshold` point against `hyperflexis`'s attainment interpolated at
the same instance-seconds, and each `threshold` point against the cheapest `hyperflexis` point
with at least its attainment (Pareto dominance; sweep rows size no `static`, are not plotted).
`--seeds` (by default the evaluation seeds, `hyperflexis.bench.seeds`) runs every case on each
seed's workload (`static` sized per seed) and adds the mean and spread (std, min-max) over
seeds: of the targets table's figures and of each row's attainment and instance-seconds.
Writes a JSON of every run, a PNG per scenario and deployment of the first seed (demand,
instances by role, attainment over time) and prints markdown tables: the runs, and the issue's
targets for the default settings.

    .venv/bin/python benchmarks/scaler_compare.py [--minutes 20] [--seeds 0,2,3,4,5] [--jobs 2]
        [--out docs/scaling]
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from hyperflexis.bench.scaling_plot import plot_scaling
from hyperflexis.bench.seed_stats import Spread, spread
from hyperflexis.bench.seeds import EVALUATION_SEEDS
from hyperflexis.cluster.scaler import HyperFlexisScalerConfig, ThresholdScalerConfig
from hyperflexis.core import SLOClasses
from hyperflexis.sim import Deployment, SimSetup
from hyperflexis.sim.elastic_setup import ScalingSetup, run_elastic
from hyperflexis.workloads import (
    RequestSpec,
    Workload,
    build_workload,
    concat_phases,
    make_lengths,
    make_workload,
    parse_slo_mix,
    poisson,
    read_azure_trace,
)
from hyperflexis.workloads.slo_mix import assign_classes_from_rng

TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "azure_llm_2023_conv.csv"
SLO_MIX = "interactive:3,standard:5,batch:2"
AUTOSCALERS = ("hyperflexis", "no-role-switch", "threshold")
LEAN = "hyperflexis-lean"
LABELS = (*AUTOSCALERS, LEAN, "static")
# No headroom, the fluid model's count scaled by 0.75 (it sums a mixed instance's prefill and
# decode fractions, which overstates its load), and a faster scale-in.
LEAN_SETTINGS = (
    "headroom=0,scale_in_headroom=0.1,target_attainment=0.75,scale_in_window_s=30,cooldown_s=20"
)
# --sweep: (label, scaler, settings) besides the defaults, for the matched-cost comparison.
SWEEP: tuple[tuple[str, str, tuple[tuple[str, float], ...]], ...] = (
    ("hyperflexis@0.95", "hyperflexis", (("target_attainment", 0.95),)),
    ("hyperflexis@0.90", "hyperflexis", (("target_attainment", 0.90),)),
    ("hyperflexis@0.80", "hyperflexis", (("target_attainment", 0.80),)),
    ("threshold@lazy", "threshold", (("queue_high", 8.0), ("utilisation_high", 0.95))),
    ("threshold@eager", "threshold", (("queue_high", 2.0), ("utilisation_high", 0.7))),
    (
        "threshold@eager-30s",
        "threshold",
        (("queue_high", 2.0), ("utilisation_high", 0.7), ("cooldown_s", 30.0)),
    ),
)
DEPLOYMENTS = ("mixed", "pd")
SCENARIOS = ("day", "shift")
# The shift's phases as (fraction of the run, mean prompt tokens, mean output tokens).
SHIFT_PHASES = ((0.4, 3000, 40), (0.2, 1200, 300), (0.4, 200, 700))


@dataclasses.dataclass(frozen=True)
class Run:
    """One simulation to run (picklable, so runs go to worker processes)."""

    scenario: str
    deployment: str
    label: str  # the row's name: the scaler's, or `hyperflexis-lean`
    scaler: str
    minutes: float
    seed: int
    day_rate_rps: float  # mean rate of the day
    peak_ratio: float
    shift_rate_rps: float
    trace: str
    num_static: tuple[int, ...] = ()  # static: instances per pool (mixed; or prefill, decode)
    scaler_settings: tuple[tuple[str, float], ...] = ()  # the scaler's config overrides


def day_workload(
    trace_path: str | Path, duration_s: float, mean_rate_rps: float, peak_ratio: float, seed: int
) -> Workload:
    """The trace's arrivals squeezed into `duration_s` and shaped like a day (see the module
    docstring), its lengths kept; SLO classes from the standard mix."""
    if peak_ratio < 1:
        raise ValueError(f"invalid 'peak_ratio': must be >= 1, got {peak_ratio}")
    trace = read_azure_trace(trace_path)
    rng = np.random.default_rng(seed)
    times = trace.arrivals_s / trace.arrivals_s[-1] * duration_s
    trace_rate = len(times) / duration_s
    shape = 1 + (peak_ratio - 1) * np.sin(np.pi * times / duration_s) ** 4
    mean_shape = 1 + (peak_ratio - 1) * 3 / 8  # the mean of sin^4 over a half period
    copies_mean = mean_rate_rps / trace_rate * shape / mean_shape
    copies = np.floor(copies_mean).astype(np.int64)
    copies += rng.random(len(copies)) < copies_mean - copies
    index = np.repeat(np.arange(len(times)), copies)
    arrivals = times[index] + rng.uniform(0.0, 1.0 / trace_rate, len(index))
    arrivals = np.clip(arrivals, 0.0, duration_s)
    classes = SLOClasses()
    names = assign_classes_from_rng(parse_slo_mix(SLO_MIX, classes), len(index), rng)
    width = len(str(len(index)))
    return make_workload(
        RequestSpec(
            request_id=f"day-{i:0{width}d}",
            arrival_s=float(arrivals[i]),
            prompt_len=int(trace.prompt_lens[index[i]]),
            output_len=int(trace.output_lens[index[i]]),
            slo_class=names[i],
        )
        for i in range(len(index))
    )


def shift_workload(duration_s: float, rate_rps: float, seed: int) -> Workload:
    """Constant-rate Poisson arrivals whose lengths move from prompt-heavy to decode-heavy."""
    classes = SLOClasses()
    phases = []
    for k, (fraction, prompt, output) in enumerate(SHIFT_PHASES):
        length_s = fraction * duration_s
        phase = build_workload(
            seed=seed * 10 + k,
            slo_mix=parse_slo_mix(SLO_MIX, classes),
            arrival=poisson(rate_rps),
            prompt_lens=make_lengths("lognormal", mean=prompt, sigma=0.6, max_len=16000),
            output_lens=make_lengths("lognormal", mean=output, sigma=0.6, max_len=4000),
            num_requests=math.ceil(rate_rps * length_s * 1.2),
            id_prefix=f"shift{k}-",
        )
        phases.append((phase, length_s))
    return concat_phases(phases)


def workload_of(run: Run) -> Workload:
    duration_s = run.minutes * 60
    if run.scenario == "day":
        return day_workload(run.trace, duration_s, run.day_rate_rps, run.peak_ratio, run.seed)
    return shift_workload(duration_s, run.shift_rate_rps, run.seed)


def execute(run: Run) -> dict[str, Any]:
    """One run's summary (the time series in one-minute intervals)."""
    if run.deployment == "pd":
        p, d = run.num_static or (1, 1)
        deployment = Deployment(num_prefill=p, num_decode=d)
    else:
        (m,) = run.num_static or (1,)
        deployment = Deployment(num_mixed=m)
    scaler_config = None
    if run.scaler_settings:
        overrides: dict[str, Any] = dict(run.scaler_settings)
        config_type = (
            ThresholdScalerConfig if run.scaler == "threshold" else HyperFlexisScalerConfig
        )
        scaler_config = config_type(**overrides)
    scaling = ScalingSetup(
        scaler=run.scaler,
        min_instances=1,
        max_instances=32,
        link_policy="all",
        scaler_config=scaler_config,
    )
    workload = workload_of(run)
    result, wall_s = run_elastic(SimSetup(deployment=deployment), scaling, SLOClasses(), workload)
    summary = result.summary(60.0)
    peaks: dict[str, int] = {}
    for sample in result.samples:
        for role, count in sample.by_role.items():
            peaks[role] = max(peaks.get(role, 0), count)
    return {
        "scenario": run.scenario,
        "deployment": run.deployment,
        "label": run.label,
        "scaler": run.scaler,
        "num_static": list(run.num_static),
        "scaler_settings": dict(run.scaler_settings),
        "seed": run.seed,
        "peak_by_role": peaks,
        "sim_wall_s": wall_s,
        **{k: summary[k] for k in _KEYS},
    }


_KEYS = (
    "num_requests",
    "num_completed",
    "num_rejected",
    "num_unfinished",
    "attainment",
    "attainment_by_class",
    "instance_seconds",
    "instance_seconds_by_state",
    "cost_usd",
    "peak_instances",
    "num_decisions",
    "num_parked_handoffs",
    "num_migrations",
    "duration_s",
    "ttft_s",
    "tpot_s",
    "time_series",
)


def static_size(runs: list[dict[str, Any]], deployment: str) -> tuple[int, ...]:
    """The largest per-pool size any autoscaler reached: the cluster a static deployment needs
    to hold the peak the way they did."""
    roles = ("prefill", "decode") if deployment == "pd" else ("mixed",)
    sizing = [r for r in runs if r["label"] in AUTOSCALERS]
    return tuple(max(r["peak_by_role"].get(role, 1) for r in sizing) for role in roles)


def table(results: list[dict[str, Any]]) -> str:
    lines = [
        "| seed | scenario | deployment | scaler | instances | attainment | instance-s | vs static "
        "| cost (USD) | decisions |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        static = next(s for s in results if s["label"] == "static" and _case(s) == _case(r))
        saving = 1 - r["instance_seconds"] / static["instance_seconds"]
        size = (
            "+".join(str(n) for n in r["num_static"])
            if r["label"] == "static"
            else "peak " + "+".join(str(n) for n in r["peak_by_role"].values())
        )
        decisions = ", ".join(f"{k} {v}" for k, v in r["num_decisions"].items()) or "-"
        lines.append(
            f"| {r['seed']} | {r['scenario']} | {r['deployment']} | {r['label']} | {size} | "
            f"{r['attainment']:.4f} | {r['instance_seconds']:.0f} | {saving:+.1%} | "
            f"{r['cost_usd']:.2f} | {decisions} |"
        )
    return "\n".join(lines)


def _interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """`y` at `x` on the piecewise-linear curve through `points` (x, y), sorted by x; None
    outside its range."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in itertools.pairwise(points):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if points and points[0][0] == x:
        return points[0][1]
    return None


def _threshold_points(
    results: list[dict[str, Any]],
) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """Each `threshold` run with the `hyperflexis` runs (every target, not the lean one) of its
    seed, scenario and deployment."""
    for key in dict.fromkeys(_case(r) for r in results):
        mine = [r for r in results if _case(r) == key]
        ours = [r for r in mine if r["scaler"] == "hyperflexis" and r["label"] != LEAN]
        for r in mine:
            if r["scaler"] == "threshold":
                yield r, ours


def _case(r: dict[str, Any]) -> tuple[int, str, str]:
    """What makes runs comparable: the same requests on the same kind of cluster."""
    return r["seed"], r["scenario"], r["deployment"]


def _threshold_cells(r: dict[str, Any]) -> str:
    return (
        f"| {r['seed']} | {r['scenario']} | {r['deployment']} | {r['label']} | "
        f"{r['instance_seconds']:.0f} | {r['attainment']:.4f} |"
    )


def matched_cost_table(results: list[dict[str, Any]]) -> str:
    """Each `threshold` setting against `hyperflexis` at the same instance-seconds: its
    attainment interpolated on the `hyperflexis` settings' (cost, attainment) curve."""
    lines = [
        "| seed | scenario | deployment | threshold setting | instance-s | attainment | "
        "hyperflexis attainment at that cost | difference (points) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r, ours in _threshold_points(results):
        curve = [(o["instance_seconds"], o["attainment"]) for o in ours]
        matched = _interpolate(curve, r["instance_seconds"])
        theirs = "outside the swept costs" if matched is None else f"{matched:.4f}"
        diff = "-" if matched is None else f"{(matched - r['attainment']) * 100:+.2f}"
        lines.append(f"{_threshold_cells(r)} {theirs} | {diff} |")
    return "\n".join(lines)


def dominance_table(results: list[dict[str, Any]]) -> str:
    """Each `threshold` point against the `hyperflexis` points (all its settings): the cheapest
    one with at least its attainment, and whether that one costs no more (Pareto dominance)."""
    lines = [
        "| seed | scenario | deployment | threshold setting | instance-s | attainment | cheapest "
        "hyperflexis at >= that attainment | its instance-s | its attainment | dominated |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r, ours in _threshold_points(results):
        better = [o for o in ours if o["attainment"] >= r["attainment"]]
        best = min(better, key=lambda o: o["instance_seconds"], default=None)
        if best is None:
            lines.append(f"{_threshold_cells(r)} none | - | - | no |")
            continue
        dominated = "yes" if best["instance_seconds"] <= r["instance_seconds"] else "no"
        lines.append(
            f"{_threshold_cells(r)} {best['label']} | {best['instance_seconds']:.0f} | "
            f"{best['attainment']:.4f} | {dominated} |"
        )
    return "\n".join(lines)


def targets_table(results: list[dict[str, Any]]) -> str:
    """The issue's targets for the default `hyperflexis` in each case: attainment within 1 point
    of `static` with >= 30% fewer instance-seconds; more attainment than `threshold` at equal or
    lower cost. With several seeds, a mean row per scenario and deployment."""
    lines = [
        "| seed | scenario | deployment | vs static (points) | fewer instance-s | met | "
        "vs threshold (points) | instance-s vs threshold | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    rows: dict[tuple[str, str], list[tuple[float, float, float, float]]] = {}
    for key in dict.fromkeys(_case(r) for r in results):
        by_label = {r["label"]: r for r in results if _case(r) == key}
        ours, static, threshold = (by_label[k] for k in ("hyperflexis", "static", "threshold"))
        figures = (
            (ours["attainment"] - static["attainment"]) * 100,
            1 - ours["instance_seconds"] / static["instance_seconds"],
            (ours["attainment"] - threshold["attainment"]) * 100,
            ours["instance_seconds"] / threshold["instance_seconds"] - 1,
        )
        rows.setdefault(key[1:], []).append(figures)
        lines.append(_target_cells(str(key[0]), key[1], key[2], figures))
    if len({r["seed"] for r in results}) > 1:
        for (scenario, deployment), figures in rows.items():
            a, b, c, d = (float(np.mean(column)) for column in zip(*figures, strict=True))
            lines.append(_target_cells("mean", scenario, deployment, (a, b, c, d)))
        lines.append("\nThe same over the seeds, mean ± std (min to max):\n")
        lines.append(
            "| scenario | deployment | vs static (points) | fewer instance-s | "
            "vs threshold (points) | instance-s vs threshold |"
        )
        lines.append("|---|---|---|---|---|---|")
        for (scenario, deployment), figures in rows.items():
            a, b, c, d = (spread(column) for column in zip(*figures, strict=True))
            cells = (a and a.text(2), b and _percent(b), c and c.text(2), d and _percent(d))
            lines.append(f"| {scenario} | {deployment} | " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def _percent(figure: Spread) -> str:
    as_percent = Spread(
        *(100 * v for v in (figure.mean, figure.std, figure.low, figure.high)), figure.n
    )
    return as_percent.text(1, "%")


def over_seeds_table(results: list[dict[str, Any]]) -> str:
    """Each row's attainment and instance-seconds as mean ± std (min-max) over the seeds."""
    lines = [
        "| scenario | deployment | scaler | attainment | instance-s |",
        "|---|---|---|---|---|",
    ]
    for s, d, label in dict.fromkeys((r["scenario"], r["deployment"], r["label"]) for r in results):
        mine = [r for r in results if (r["scenario"], r["deployment"], r["label"]) == (s, d, label)]
        attainment = spread(r["attainment"] for r in mine)
        cost = spread(r["instance_seconds"] for r in mine)
        assert attainment is not None and cost is not None  # `mine` holds at least one run
        lines.append(f"| {s} | {d} | {label} | {attainment.text(4)} | {cost.text(0)} |")
    return "\n".join(lines)


def _target_cells(
    seed: str, scenario: str, deployment: str, figures: tuple[float, float, float, float]
) -> str:
    vs_static, saving, vs_threshold, extra_cost = figures
    static_met = vs_static >= -1 and saving >= 0.3
    threshold_met = vs_threshold > 0 and extra_cost <= 0
    return (
        f"| {seed} | {scenario} | {deployment} | {vs_static:+.2f} | {saving:.1%} | "
        f"{'yes' if static_met else 'no'} | {vs_threshold:+.2f} | {extra_cost:+.1%} | "
        f"{'yes' if threshold_met else 'no'} |"
    )


SWEEP_LABELS = {label for label, _, _ in SWEEP}


def print_tables(results: list[dict[str, Any]]) -> None:
    """The runs, the targets (with the mean and spread over seeds when there are several) and,
    when `results` hold sweep rows, the matched-cost comparison."""
    main_rows = [r for r in results if r["label"] not in SWEEP_LABELS]
    print(table(main_rows))
    print("\nAgainst the targets (default settings):\n")
    print(targets_table(main_rows))
    seeds = sorted({r["seed"] for r in results})
    if len(seeds) > 1:
        print(f"\nOver seeds {','.join(map(str, seeds))}, mean ± std (min to max):\n")
        print(over_seeds_table(main_rows))
    if any(r["label"] in SWEEP_LABELS for r in results):
        print("\nSweep (matched cost):\n")
        print(table([r for r in results if r["label"] in SWEEP_LABELS or r["label"] == "static"]))
        print()
        print(matched_cost_table(results))
        print()
        print(dominance_table(results))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", default=str(TRACE))
    parser.add_argument("--minutes", type=float, default=20.0, help="day: simulated minutes")
    parser.add_argument("--day-rate", type=float, default=20.0, help="day: mean requests/s")
    parser.add_argument("--peak-ratio", type=float, default=5.0, help="day: peak / trough shape")
    parser.add_argument("--shift-rate", type=float, default=25.0, help="shift: requests/s")
    parser.add_argument("--shift-minutes", type=float, default=10.0, help="shift: minutes")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--deployments", default=",".join(DEPLOYMENTS))
    parser.add_argument(
        "--seeds",
        default=",".join(map(str, EVALUATION_SEEDS)),
        help="comma-separated workload seeds; each runs every case (default: the evaluation "
        "seeds, hyperflexis.bench.seeds)",
    )
    parser.add_argument(
        "--lean",
        default=LEAN_SETTINGS,
        help=f"HyperFlexisScalerConfig settings of {LEAN} (default: {LEAN_SETTINGS})",
    )
    parser.add_argument("--no-lean", action="store_true", help=f"skip {LEAN}")
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="also run the SWEEP settings and print the matched-cost comparison",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", type=Path, default=Path("docs/scaling"))
    parser.add_argument(
        "--tables-from",
        type=Path,
        default=None,
        metavar="JSON",
        help="run nothing: print the tables of a recorded scaler_compare.json",
    )
    args = parser.parse_args()
    if args.tables_from is not None:
        print_tables(json.loads(args.tables_from.read_text())["runs"])
        return 0

    lean = tuple(
        (key.strip(), float(value))
        for key, value in (item.split("=") for item in args.lean.split(",") if item)
    )
    variants: list[tuple[str, str, tuple[tuple[str, float], ...]]] = [
        (name, name, ()) for name in AUTOSCALERS
    ]
    if not args.no_lean:
        variants.append((LEAN, "hyperflexis", lean))
    if args.sweep:
        variants += SWEEP
    scenarios = [s for s in args.scenarios.split(",") if s]
    deployments = [d for d in args.deployments.split(",") if d]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    base = {
        "minutes": args.minutes,
        "day_rate_rps": args.day_rate,
        "peak_ratio": args.peak_ratio,
        "shift_rate_rps": args.shift_rate,
        "trace": args.trace,
    }
    cases = [(seed, s, d) for seed in seeds for s in scenarios for d in deployments]

    def common(seed: int, scenario: str) -> dict[str, Any]:
        minutes = args.minutes if scenario == "day" else args.shift_minutes
        return {**base, "seed": seed, "minutes": minutes}

    started = time.perf_counter()
    results: list[dict[str, Any]] = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        autoscaled = [
            Run(
                scenario=s,
                deployment=d,
                label=label,
                scaler=name,
                scaler_settings=settings,
                **common(seed, s),
            )
            for seed, s, d in cases
            for label, name, settings in variants
            # Collocated pools have no roles to switch: no-role-switch is hyperflexis there.
            if not (d == "mixed" and name == "no-role-switch")
        ]
        results += pool.map(execute, autoscaled)
        statics = [
            Run(
                scenario=s,
                deployment=d,
                label="static",
                scaler="static",
                num_static=static_size([r for r in results if _case(r) == (seed, s, d)], d),
                **common(seed, s),
            )
            for seed, s, d in cases
        ]
        results += pool.map(execute, statics)
    wall_s = time.perf_counter() - started
    order = {name: i for i, name in enumerate((*LABELS, *(label for label, _, _ in SWEEP)))}
    results.sort(key=lambda r: (*_case(r), order[r["label"]]))
    main_rows = [r for r in results if r["label"] not in SWEEP_LABELS]

    args.out.mkdir(parents=True, exist_ok=True)
    for seed, s, d in cases:
        if seed != seeds[0]:
            continue  # plots of the first seed only
        mine = [r for r in main_rows if _case(r) == (seed, s, d)]
        title = f"{s}: Llama-3.1-8B on H100, {'P/D' if d == 'pd' else 'collocated'}"
        plot_scaling(
            {r["label"]: r["time_series"] for r in mine},
            args.out / f"scaling_{s}_{d}.png",
            title=title,
        )
    doc = {"command": " ".join(sys.argv), "wall_s": wall_s, "runs": results}
    (args.out / "scaler_compare.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print_tables(results)
    print(f"\n{len(results)} runs in {wall_s:.0f} s wall; wrote {args.out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
