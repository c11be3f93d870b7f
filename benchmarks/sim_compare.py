"""Issue 4's comparison, made fair (issue 18): SLO attainment against offered rate for
hyperflexis and the baselines (fcfs, priority, edf, edf-drop, sarathi, distserve), and
hyperflexis with each of its parts off in turn (the ablation rows), on a multi-SLO mix of
the Azure LLM 2023 conversation trace, Llama-3.1-8B on H100 (analytic roofline), collocated (4
instances) and P/D (2P + 2D).

Each baseline runs at its best setting from `benchmarks/tune_baselines.py` (`--tuned`: budget,
dispatcher, `max_num_seqs`, chosen on the tuning seeds; a baseline missing from that file runs
at 2,048 tokens with its natural dispatcher and is marked untuned), and `vllm-default` is vLLM as
it comes (fcfs, 8,192 tokens, round-robin). hyperflexis runs at its defaults with its dispatcher.
The trace's first `--num-requests` requests (3,000: its first ~11 minutes) are time-scaled to
each rate. Reports per deployment: goodput at 90% attainment and its ratio to the best tuned
baseline's (the headline) and to vLLM's defaults; the attainment ratio at the rate where the best
baseline falls to 50%; mean end-to-end latency there; per-class attainment, rejections and
preemptions. Every row runs on each of `--seeds` (the evaluation seeds by default): the full
report is the first seed's, and a table per deployment gives each row's goodput@90 per seed,
its mean ± std (min-max), and hyperflexis's ratio to it per seed and as mean ± std (min-max),
the best tuned baseline chosen per seed (`bench/seed_stats.py`). `--rows` runs only some rows
(hyperflexis always); `--reuse` takes rows (per seed) from earlier results files;
`--early-stop` ends each sweep at its first rate below 90% attainment (enough for goodput@90).

    .venv/bin/python benchmarks/sim_compare.py [--num-requests 3000] [--jobs 2]
        [--seeds 0,2,3,4,5] [--rows edf-drop,priority,vllm-default] [--reuse FILE]...
        [--early-stop]
        [--step-noise CV] [--profile-error BIAS] [--tuned docs/sim_compare/tuned_baselines.json]
        [--out docs/sim_compare/results.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from hyperflexis.bench.metrics import attainment_at, goodput_at, rate_where_falls_to
from hyperflexis.bench.plots import plot_attainment_vs_rate
from hyperflexis.bench.seed_stats import rows_over_seeds, seeds_table
from hyperflexis.bench.seeds import EVALUATION_SEEDS
from hyperflexis.bench.sim_points import DEFAULT_SLO_MIX, TracePoint, point_workload, run_point
from hyperflexis.bench.tuning import (
    GOODPUT_TARGET,
    BaselineSetting,
    load_tuned,
    sweep_goodputs,
    vllm_default,
)
from hyperflexis.core import SLOClasses
from hyperflexis.sim import Deployment, SimSetup, natural_dispatcher
from hyperflexis.sim.bound import steady_goodput_bound
from hyperflexis.workloads import MIN_STEADY_DURATION_S

TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "azure_llm_2023_conv.csv"
TUNED = Path(__file__).resolve().parents[1] / "docs" / "sim_compare" / "tuned_baselines.json"
SLO_MIX = DEFAULT_SLO_MIX
BASELINES = ("fcfs", "priority", "edf", "edf-drop", "sarathi", "distserve")
OURS = "hyperflexis"
# hyperflexis with one part off (scheduler/policies/hyperflexis_ablation.py); SLO-aware dispatch
# is off by dispatching least-loaded instead.
ABLATIONS = {
    "hyperflexis-no-budget": ("hyperflexis-no-budget", None),
    "hyperflexis-no-prioritise": ("hyperflexis-no-prioritise", None),
    "hyperflexis-no-shed": ("hyperflexis-no-shed", None),
    "hyperflexis-no-dispatch": ("hyperflexis", "least-loaded"),
}
VLLM = "vllm-default"
BEST = "best tuned baseline"  # per seed, among the baselines run (`--rows`)
UNTUNED_BUDGET = 2048
DEPLOYMENTS = {
    "collocated-4": Deployment(num_mixed=4),
    "pd-2p2d": Deployment(num_prefill=2, num_decode=2),
}
RATES = {
    "collocated-4": (60.0, 80.0, 100.0, 120.0, 140.0, 160.0, 200.0, 250.0),
    "pd-2p2d": (30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 100.0, 120.0),
}


def rows(deployment: str, tuned_path: Path) -> dict[str, tuple[SimSetup, str]]:
    """Each row of the comparison: its setup and how it was configured (for the report)."""
    tuned = load_tuned(tuned_path, TRACE.stem, deployment)
    where = DEPLOYMENTS[deployment]
    out = {OURS: (SimSetup(deployment=where, policy=OURS), "defaults, hyperflexis dispatch")}
    for row, (policy, dispatch) in ABLATIONS.items():
        ablated = SimSetup(deployment=where, policy=policy, dispatch=dispatch)
        out[row] = (ablated, f"ablation: {policy}, {ablated.dispatcher_name} dispatch")
    for policy in BASELINES:
        setting = tuned.get(policy)
        note = "tuned"
        if setting is None:
            setting = BaselineSetting(policy, UNTUNED_BUDGET, natural_dispatcher(policy))
            note = "UNTUNED"
        out[policy] = (setting.sim_setup(where), f"{note}: {setting.label()}")
    vllm = vllm_default()
    out[VLLM] = (vllm.sim_setup(where), f"vLLM defaults: {vllm.label()}")
    return out


def _analyse(runs: list[dict[str, Any]], names: list[str]) -> dict[str, Any]:
    """Goodput@90 and the 50%-point comparison for one deployment's runs (`row` names each)."""
    series = {
        name: [(r["rate"], r["attainment"]) for r in runs if r["row"] == name] for name in names
    }
    goodput = {name: goodput_at(points, 0.9) for name, points in series.items()}
    baselines = [p for p in BASELINES if p in names]  # none: a run of the ablation rows only
    best_goodput = max(baselines, key=lambda p: goodput[p], default=None)
    # The baseline that holds out longest before falling to 50% attainment.
    falls = {p: rate_where_falls_to(series[p], 0.5) for p in baselines}
    best_50 = max(baselines, key=lambda p: falls[p] or float("inf"), default=OURS)
    rate_50 = falls.get(best_50)
    ours_at_50 = None if rate_50 is None else attainment_at(series[OURS], rate_50)
    base_at_50 = None if rate_50 is None else attainment_at(series[best_50], rate_50)
    # Mean latency at the swept rate nearest that point.
    near = None
    if rate_50 is not None:
        near = min((r["rate"] for r in runs), key=lambda rate: abs(rate - rate_50))
    e2e = {r["row"]: r["e2e_s"]["mean"] for r in runs if near is not None and r["rate"] == near}

    def ratio(other: str | None) -> float | None:
        return goodput[OURS] / goodput[other] if other and goodput.get(other) else None

    return {
        "goodput_at_90": goodput,
        "best_baseline_goodput": best_goodput,
        "goodput_ratio": ratio(best_goodput),
        "goodput_ratio_vs_vllm_default": ratio(VLLM),
        "goodput_ratio_by_row": {name: ratio(name) for name in names if name != OURS},
        "best_baseline_at_50": best_50,
        "rate_where_best_baseline_falls_to_50": rate_50,
        "attainment_at_that_rate": {OURS: ours_at_50, best_50: base_at_50},
        "attainment_ratio_at_50": (ours_at_50 / base_at_50) if ours_at_50 and base_at_50 else None,
        "latency_rate": near,
        "mean_e2e_s_at_latency_rate": e2e,
        "series": series,
    }


def _fmt_ratio(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"


def _report(
    name: str, runs: list[dict[str, Any]], analysis: dict[str, Any], notes: dict[str, str]
) -> str:
    names = list(notes)
    lines = [f"== {name} =="]
    lines += [f"  {row}: {note}" for row, note in notes.items()]
    lines.append("attainment by rate")
    widths = [max(6, len(p)) for p in names]
    header = " ".join(f"{p:>{w}}" for p, w in zip(names, widths, strict=True))
    lines.append(f"{'rate':>6} {header}")
    by_key = {(r["row"], r["rate"]): r for r in runs}
    for rate in sorted({r["rate"] for r in runs}):
        cells = " ".join(
            f"{by_key[(p, rate)]['attainment']:>{w}.3f}" if (p, rate) in by_key else f"{'-':>{w}}"
            for p, w in zip(names, widths, strict=True)
        )
        lines.append(f"{rate:>6g} {cells}")
    goodput, ratios = analysis["goodput_at_90"], analysis["goodput_ratio_by_row"]
    lines.append("goodput@90 (req/s) and hyperflexis's ratio to each:")
    lines += [
        f"  {p:>24} {goodput[p]:6.1f}  {'' if p == OURS else _fmt_ratio(ratios[p])}" for p in names
    ]
    lines.append(
        f"headline: {_fmt_ratio(analysis['goodput_ratio'])} the best tuned baseline "
        f"({analysis['best_baseline_goodput']}); "
        f"{_fmt_ratio(analysis['goodput_ratio_vs_vllm_default'])} vLLM's defaults"
    )
    rate_50 = analysis["rate_where_best_baseline_falls_to_50"]
    if rate_50 is not None:
        att = analysis["attainment_at_that_rate"]
        lines.append(
            f"best baseline at 50% ({analysis['best_baseline_at_50']}) falls there at "
            f"{rate_50:.1f} req/s; attainment there: "
            + ", ".join(f"{p} {v:.3f}" for p, v in att.items() if v is not None)
            + f"; ratio {_fmt_ratio(analysis['attainment_ratio_at_50'])}"
        )
    near = analysis["latency_rate"]
    if near is not None:
        e2e = analysis["mean_e2e_s_at_latency_rate"]
        lines.append(
            f"mean e2e latency at {near:g} req/s: "
            + ", ".join(f"{p} {v:.2f}s" for p, v in e2e.items() if v is not None)
        )
        for policy in (OURS, analysis["best_baseline_at_50"]):
            if (policy, near) not in by_key:
                continue  # an early-stopped sweep
            run = by_key[(policy, near)]
            classes = ", ".join(f"{c} {a:.3f}" for c, a in run["attainment_by_class"].items())
            lines.append(
                f"  {policy} at {near:g}: per class {classes}; rejected {run['num_rejected']}; "
                f"preemptions {run['num_preemptions']}; TTFT p90 {run['ttft_s']['p90']:.2f}s; "
                f"TPOT p90 {1e3 * run['tpot_s']['p90']:.1f}ms"
            )
    return "\n".join(lines)


def _point(args: argparse.Namespace, seed: int, rate: float, setup: SimSetup) -> TracePoint:
    return TracePoint(str(TRACE), args.num_requests, seed, rate, setup, SLO_MIX, args.duration)


def _one(task: tuple[str, str, TracePoint]) -> dict[str, Any]:
    deployment, row, point = task
    return {"deployment": deployment, "row": row, "policy": point.setup.policy, **run_point(point)}


def _reusable(
    args: argparse.Namespace, table: dict[str, dict[str, tuple[SimSetup, str]]], seeds: list[int]
) -> dict[tuple[str, str, int], list[dict[str, Any]]]:
    """(deployment, row, seed) -> its runs in the `--reuse` files, for rows set up exactly as
    now there."""
    reused = {}
    for path in args.reuse:
        old = json.loads(path.read_text())
        same = {"num_requests": args.num_requests, "steady_duration_s": args.duration}
        same |= {"step_noise_cv": args.step_noise, "profile_error": args.profile_error}
        if any(old.get(key) != value for key, value in same.items()) or args.admission_control:
            raise SystemExit(f"{path} is of another workload, noise or admission control")
        for name, rows_now in table.items():
            notes = old.get(name, {}).get("rows", {})
            for row, (_, note) in rows_now.items():
                for seed in seeds:
                    runs = [
                        r
                        for r in old.get(name, {}).get("runs", [])
                        if r["row"] == row and r["seed"] == seed
                    ]
                    if notes.get(row) == note and _whole(runs, RATES[name]):
                        reused.setdefault((name, row, seed), runs)
    return reused


def _whole(runs: list[dict[str, Any]], rates: tuple[float, ...]) -> bool:
    """Whether `runs` are one sweep over `rates`: all of them, or (`--early-stop`) the lowest up
    to and including the first below 90% attainment."""
    runs = sorted(runs, key=lambda r: r["rate"])
    if [r["rate"] for r in runs] != list(rates[: len(runs)]) or not runs:
        return False
    passing = [r["attainment"] >= GOODPUT_TARGET for r in runs]
    return all(passing[:-1]) and (len(runs) == len(rates) or not passing[-1])


def _run(tasks: list[tuple[str, str, TracePoint]], jobs: int, early_stop: bool) -> list[Any]:
    """Every task's run; with `early_stop`, each (deployment, row, seed) sweep only up to its
    first rate below 90% attainment, where goodput@90 stops reading (`tuning.sweep_goodputs`)."""
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        if not early_stop:
            return list(pool.map(_one, tasks))
        sweeps: dict[tuple[str, str, int], dict[float, TracePoint]] = {}
        for name, row, point in tasks:
            sweeps.setdefault((name, row, point.seed), {})[point.rate_rps] = point
        runs: list[dict[str, Any]] = []

        def evaluate(batch: Sequence[tuple[str, tuple[str, str, int], float]]) -> list[float]:
            done = list(pool.map(_one, [(k[0], k[1], sweeps[k][rate]) for _, k, rate in batch]))
            runs.extend(done)
            return [r["attainment"] for r in done]

        sweep_goodputs([(str(k), k, tuple(sweeps[k])) for k in sweeps], evaluate)
        return runs


def _over_seeds(analyses: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Each row's goodput@90 and hyperflexis's ratio to it over the seeds (mean, spread; the
    ratio taken per seed), the best tuned baseline chosen per seed as a row of its own."""
    goodput = {seed: dict(a["goodput_at_90"]) for seed, a in analyses.items()}
    ratio = {seed: dict(a["goodput_ratio_by_row"]) for seed, a in analyses.items()}
    best = {seed: a["best_baseline_goodput"] for seed, a in analyses.items()}
    for seed, a in analyses.items():
        if best[seed] is not None:
            goodput[seed][BEST] = a["goodput_at_90"][best[seed]]
            ratio[seed][BEST] = a["goodput_ratio"]

    def echo(figures: dict[int, dict[str, float | None]]) -> dict[str, Any]:
        return {k: v and v.echo() for k, v in rows_over_seeds(figures).items()}

    return {
        "seeds": list(analyses),
        "best_baseline_by_seed": best,
        "goodput_at_90": echo(goodput),
        "goodput_ratio_by_row": echo(ratio),
        "table": seeds_table(goodput, ratio, "goodput@90", f"{OURS} / row"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=3000)
    parser.add_argument(
        "--seeds",
        default=",".join(map(str, EVALUATION_SEEDS)),
        help="comma-separated workload seeds, each runs every row and rate (default: the "
        "evaluation seeds, hyperflexis.bench.seeds); goodput and ratios are reported per seed "
        "and as mean and spread",
    )
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--admission-control", action="store_true")
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help=f"steady state: every rate replays this many seconds of arrivals (at least "
        f"{MIN_STEADY_DURATION_S:g}; default: the first --num-requests, a short replay)",
    )
    parser.add_argument("--deployments", default=",".join(DEPLOYMENTS))
    parser.add_argument(
        "--rows",
        default=None,
        help=f"comma-separated rows to run (default: all; {OURS} always runs)",
    )
    parser.add_argument(
        "--step-noise",
        type=float,
        default=0.0,
        metavar="CV",
        help="step time noise (simulate's --step-noise; seeded by each workload seed)",
    )
    parser.add_argument("--profile-error", type=float, default=0.0, metavar="BIAS")
    parser.add_argument("--tuned", type=Path, default=TUNED)
    parser.add_argument(
        "--early-stop",
        action="store_true",
        help="each row's sweep stops after its first rate below 90%% attainment (goodput@90 "
        "reads no further; the 50%% point and the latency there are then mostly missing)",
    )
    parser.add_argument(
        "--reuse",
        type=Path,
        action="append",
        default=[],
        help="an earlier results JSON of the same workload and noise (repeatable): rows "
        "configured as there take each seed's runs from it instead of running again",
    )
    parser.add_argument("--out", type=Path, default=Path("docs/sim_compare/results.json"))
    args = parser.parse_args()

    names = [n for n in args.deployments.split(",") if n]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    table = {name: rows(name, args.tuned) for name in names}
    if args.rows is not None:
        keep = {OURS, *args.rows.split(",")}
        table = {name: {k: v for k, v in t.items() if k in keep} for name, t in table.items()}
    tasks = []
    noise = {"step_noise_cv": args.step_noise, "profile_error": args.profile_error}
    for name in names:
        for row, (setup, _) in table[name].items():
            setup = dataclasses.replace(
                setup, step_noise_cv=args.step_noise, profile_error=args.profile_error
            )
            if args.admission_control:
                config = dataclasses.replace(setup.scheduler, admission_control=True)
                setup = dataclasses.replace(setup, scheduler=config)
            for seed in seeds:
                for rate in RATES[name]:
                    tasks.append((name, row, _point(args, seed, rate, setup)))
    reused = _reusable(args, table, seeds)
    tasks = [t for t in tasks if (t[0], t[1], t[2].seed) not in reused]
    started = time.perf_counter()
    runs = _run(tasks, args.jobs, args.early_stop)
    runs += [run for key in reused for run in reused[key]]
    wall_s = time.perf_counter() - started
    doc: dict[str, Any] = {
        "num_requests": args.num_requests,
        "slo_mix": SLO_MIX,
        "seed": seeds[0],
        "seeds": seeds,
        "steady_duration_s": args.duration,
        **noise,
        "wall_s": wall_s,
    }
    for name in names:
        mine = [r for r in runs if r["deployment"] == name]
        notes = {row: note for row, (_, note) in table[name].items()}
        by_seed = {s: [r for r in mine if r["seed"] == s] for s in seeds}
        analyses = {s: _analyse(by_seed[s], list(notes)) for s in seeds}
        analysis = analyses[seeds[0]]
        print(_report(f"{name}, seed {seeds[0]}", by_seed[seeds[0]], analysis, notes))
        over_seeds = _over_seeds(analyses)
        print(f"{name} over seeds {args.seeds} (best tuned baseline per seed: ", end="")
        print(", ".join(f"{s} {b}" for s, b in over_seeds["best_baseline_by_seed"].items()) + ")")
        print(over_seeds["table"])
        # The fluid bound on goodput@90 beside the sweep (hyperflexis.sim.bound).
        bound = steady_goodput_bound(
            SimSetup(deployment=DEPLOYMENTS[name]),
            SLOClasses(),
            lambda rate: point_workload(_point(args, seeds[0], rate, SimSetup())),
            max(RATES[name]),
        )
        analysis["goodput_bound_at_90"] = bound.echo()
        print(f"fluid bound on goodput@90: {bound.rate_rps:.1f} req/s")
        plot = args.out.with_name(f"{name}.png")
        plot_attainment_vs_rate(
            analysis["series"],
            plot,
            title=f"Llama-3.1-8B on H100, {name}, Azure conv 3:5:2, seed {seeds[0]}",
        )
        doc[name] = {"rows": notes, "analysis": analysis, "runs": mine, "over_seeds": over_seeds}
        doc[name]["analysis_by_seed"] = analyses
        print(f"wrote {plot}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out} ({len(runs)} runs in {wall_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
