"""Tune every baseline policy over its own knobs before it is compared (issue 18, item 1).

For each deployment of the comparison (collocated-4, pd-2p2d) and each baseline (fcfs,
priority, edf, edf-drop, sarathi, distserve), a coordinate-descent search
(`hyperflexis.bench.tuning`) over the step token budget (512 to 8,192; DistServe, which does not
chunk, from the trace's longest prompt up), the dispatcher (round-robin, least-loaded; DistServe
also its own static P/D pairing) and `max_num_seqs` (128, 256, 512) keeps the setting with the
highest goodput@90. Goodput is measured on the tuning seeds (`hyperflexis.bench.seeds`), never
on the evaluation seeds `sim_compare.py` reports, over the trace's first `--num-requests`
requests time-scaled to each rate (a short replay: see docs/results.md on what that measures).
The chosen settings go to `--out`, which `sim_compare.py` reads.

    .venv/bin/python benchmarks/tune_baselines.py [--num-requests 2000] [--jobs 2]
        [--step-noise CV] [--profile-error BIAS] [--out docs/sim_compare/tuned_baselines.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from hyperflexis.bench.seeds import TUNING_SEEDS
from hyperflexis.bench.sim_points import TracePoint, longest_prompt, run_point
from hyperflexis.bench.tuning import (
    BaselineSetting,
    Point,
    SearchSpace,
    TuneCase,
    TuneResult,
    distserve_budgets,
    save_tuned,
    tune,
)
from hyperflexis.sim import Deployment, SimSetup, natural_dispatcher

TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "azure_llm_2023_conv.csv"
BASELINES = ("fcfs", "priority", "edf", "edf-drop", "sarathi", "distserve")
DEPLOYMENTS = {
    "collocated-4": Deployment(num_mixed=4),
    "pd-2p2d": Deployment(num_prefill=2, num_decode=2),
}
# Wider than the comparison's: a short replay lets a baseline pass well past capacity.
RATES = {
    "collocated-4": (60.0, 80.0, 100.0, 120.0, 140.0, 160.0, 180.0, 200.0, 250.0, 300.0),
    "pd-2p2d": (30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 100.0, 120.0, 140.0, 160.0),
}
START_BUDGET = 2048  # the comparison's budget before tuning


def cases(
    deployments: Sequence[str], policies: Sequence[str], space: SearchSpace, longest: int
) -> list[TuneCase]:
    out = []
    for name in deployments:
        for policy in policies:
            mine, budget = space, START_BUDGET
            if policy == "distserve":
                extra = ("distserve",) if DEPLOYMENTS[name].is_disaggregated else ()
                mine = dataclasses.replace(
                    space,
                    budgets=distserve_budgets(space.budgets, longest),
                    dispatchers=(*space.dispatchers, *extra),
                )
                budget = mine.budgets[0]
            start = BaselineSetting(policy, budget, natural_dispatcher(policy))
            out.append(TuneCase(name, start, mine, RATES[name]))
    return out


class Evaluator:
    """Runs points on a process pool: each point on every tuning seed, attainment averaged."""

    def __init__(self, pool: ProcessPoolExecutor, args: argparse.Namespace) -> None:
        self.pool, self.args = pool, args
        self.num_runs = 0

    def setup(self, deployment: str, setting: BaselineSetting) -> SimSetup:
        return setting.sim_setup(
            DEPLOYMENTS[deployment],
            step_noise_cv=self.args.step_noise,
            profile_error=self.args.profile_error,
        )

    def __call__(self, points: Sequence[Point]) -> list[float]:
        seeds = self.args.seeds
        tasks = [
            TracePoint(str(TRACE), self.args.num_requests, seed, rate, self.setup(key, setting))
            for key, setting, rate in points
            for seed in seeds
        ]
        runs = list(self.pool.map(run_point, tasks))
        self.num_runs += len(runs)
        print(f"  {self.num_runs} runs done", file=sys.stderr, flush=True)
        attainments = [float(run["attainment"]) for run in runs]
        n = len(seeds)
        return [statistics.fmean(attainments[i * n : (i + 1) * n]) for i in range(len(points))]


def _report(results: dict[str, dict[str, TuneResult]]) -> None:
    for deployment, by_policy in results.items():
        print(f"== {deployment} ==")
        for policy, result in by_policy.items():
            start = next(iter(result.tried.values()))
            print(
                f"{policy:>10}: best {result.best.label()} goodput@90 {result.goodput:.1f} "
                f"(first tried {start:.1f}; {len(result.tried)} settings)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-requests", type=int, default=2000)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--seeds",
        type=lambda s: [int(x) for x in s.split(",") if x],
        default=list(TUNING_SEEDS),
        help="workload seeds (default: the tuning seeds, hyperflexis.bench.seeds)",
    )
    parser.add_argument("--deployments", default=",".join(DEPLOYMENTS))
    parser.add_argument("--policies", default=",".join(BASELINES))
    parser.add_argument("--step-noise", type=float, default=0.0, help="step time CV (simulate's)")
    parser.add_argument("--profile-error", type=float, default=0.0, help="step time bias")
    parser.add_argument("--out", type=Path, default=Path("docs/sim_compare/tuned_baselines.json"))
    args = parser.parse_args()
    names = [n for n in args.deployments.split(",") if n]
    policies = [p for p in args.policies.split(",") if p]
    space = SearchSpace()
    longest = longest_prompt(str(TRACE), args.num_requests)
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        evaluate = Evaluator(pool, args)
        tuned = tune(cases(names, policies, space, longest), evaluate)
    wall_s = time.perf_counter() - started
    results: dict[str, dict[str, TuneResult]] = {name: {} for name in names}
    for case, result in zip(cases(names, policies, space, longest), tuned, strict=True):
        results[case.key][case.start.policy] = result
    _report(results)
    meta: dict[str, Any] = {
        "num_requests": args.num_requests,
        "seeds": args.seeds,
        "rates": {name: RATES[name] for name in names},
        "space": dataclasses.asdict(space),
        "step_noise_cv": args.step_noise,
        "profile_error": args.profile_error,
        "wall_s": wall_s,
        "num_runs": evaluate.num_runs,
    }
    save_tuned(args.out, TRACE.stem, meta, results)
    print(f"wrote {args.out} ({evaluate.num_runs} runs in {wall_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
