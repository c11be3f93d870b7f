"""Issue 18, item 12: hyperflexis against the best tuned baseline and the fluid bound, at steady
state, at step noise CV 0.3, per seed (evaluation seeds by default), on the conversation trace,
collocated (4 instances) and P/D (2P + 2D).

Each row's goodput@90 comes from a short rate search per seed: the row's two start rates on the
deployment (chosen on tuning seed 1), a rate step down while the lowest fails 90% attainment,
and a step up while the highest passes, so every figure is read between a passing and a failing
rate (`goodput_at`). The bound (`sim/bound.py`) is per seed and
deployment, on the same steady workload. Prints per seed, mean and spread (min-max), and the
ratios; writes every run to `--out`.

    .venv/bin/python benchmarks/near_bound.py [--seeds 0,2,3,4,5] [--duration 60] [--jobs 2]
        [--rows hyperflexis,hyperflexis-work,edf-drop] [--out docs/sim_compare/near_bound.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from hyperflexis.bench.metrics import goodput_at
from hyperflexis.bench.seeds import EVALUATION_SEEDS
from hyperflexis.bench.sim_points import TracePoint, point_workload, run_point
from hyperflexis.bench.tuning import load_tuned
from hyperflexis.core import SLOClasses
from hyperflexis.scheduler.config import SchedulerConfig
from hyperflexis.sim import Deployment, SimSetup
from hyperflexis.sim.bound import steady_goodput_bound

ROOT = Path(__file__).resolve().parents[1]
TRACE = ROOT.parent / "shared" / "traces" / "azure_llm_2023_conv.csv"
TUNED = ROOT / "docs" / "sim_compare" / "tuned_baselines.json"
DEPLOYMENTS = {
    "collocated-4": Deployment(num_mixed=4),
    "pd-2p2d": Deployment(num_prefill=2, num_decode=2),
}
# Where each row's search starts (req/s; from tuning seed 1) and its step.
START = {
    ("hyperflexis-work", "collocated-4"): (115.0, 130.0),
    ("hyperflexis", "collocated-4"): (100.0, 115.0),
    ("edf-drop", "collocated-4"): (100.0, 115.0),
    ("hyperflexis-work", "pd-2p2d"): (80.0, 90.0),
    ("hyperflexis", "pd-2p2d"): (60.0, 70.0),
    ("edf-drop", "pd-2p2d"): (60.0, 70.0),
}
STEP = {"collocated-4": 15.0, "pd-2p2d": 10.0}
TARGET = 0.9
MAX_STEPS = 4  # rate steps a search may take past its start


def setup_of(row: str, deployment: str, noise_cv: float) -> SimSetup:
    """hyperflexis at its defaults (priority shedding, no oversize cut); `hyperflexis-work`:
    item 12's goodput settings (shed the most work, oversize cut 1.0); edf-drop tuned."""
    where = DEPLOYMENTS[deployment]
    if row == "edf-drop":
        setting = load_tuned(TUNED, TRACE.stem, deployment)["edf-drop"]
        return setting.sim_setup(where, step_noise_cv=noise_cv)
    config = SchedulerConfig()
    if row == "hyperflexis-work":
        config = dataclasses.replace(config, shed_order="work", oversize_load=1.0)
    return SimSetup(
        deployment=where, policy="hyperflexis", scheduler=config, step_noise_cv=noise_cv
    )


def search(task: tuple[str, str, int, float, float]) -> dict[str, Any]:
    """One row's goodput@90 on one seed and deployment, from the fewest rates that bracket it."""
    row, deployment, seed, duration_s, noise_cv = task
    setup = setup_of(row, deployment, noise_cv)
    points: dict[float, float] = {}
    runs = []

    def at(rate: float) -> float:
        if rate not in points:
            point = TracePoint(str(TRACE), 0, seed, rate, setup, duration_s=duration_s)
            result = run_point(point)
            points[rate] = result["attainment"]
            keep = ("attainment", "attainment_by_class", "num_rejected", "sim_wall_s")
            runs.append({"rate": rate, **{k: result[k] for k in keep}})
        return points[rate]

    low, high = START[(row, deployment)]
    step = STEP[deployment]
    for _ in range(MAX_STEPS):
        if at(low) >= TARGET or low <= step:
            break
        high, low = low, low - step
    for _ in range(MAX_STEPS):
        if at(high) < TARGET:
            break
        high += step
    goodput = goodput_at(sorted(points.items()), TARGET)
    return {
        "row": row,
        "deployment": deployment,
        "seed": seed,
        "goodput_at_90": goodput,
        "runs": runs,
    }


def bound_of(deployment: str, seed: int, duration_s: float) -> float:
    def workload_at(rate: float) -> Any:
        return point_workload(
            TracePoint(str(TRACE), 0, seed, rate, SimSetup(), duration_s=duration_s)
        )

    setup = SimSetup(deployment=DEPLOYMENTS[deployment])
    return steady_goodput_bound(setup, SLOClasses(), workload_at, 150.0).rate_rps


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.1f} ({min(values):.1f}-{max(values):.1f})"


def _percent_spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.1%} ({min(values):.1%}-{max(values):.1%})"


def report(results: list[dict[str, Any]], bounds: dict[str, dict[int, float]]) -> str:
    lines = []
    for deployment, by_seed in bounds.items():
        rows = sorted({r["row"] for r in results if r["deployment"] == deployment})
        seeds = sorted(by_seed)
        good = {
            row: {
                r["seed"]: r["goodput_at_90"]
                for r in results
                if r["row"] == row and r["deployment"] == deployment
            }
            for row in rows
        }
        lines.append(f"{deployment}: goodput@90 per seed {seeds}, mean (min-max)")
        lines.append(
            f"  bound: {[round(by_seed[s], 1) for s in seeds]} {_spread(list(by_seed.values()))}"
        )
        for row in rows:
            values = [good[row][s] for s in seeds]
            of_bound = [good[row][s] / by_seed[s] for s in seeds]
            line = f"  {row}: {[round(v, 1) for v in values]} {_spread(values)}"
            line += f"; of bound {_percent_spread(of_bound)}"
            if "edf-drop" in good and row != "edf-drop":
                ratios = [good[row][s] / good["edf-drop"][s] for s in seeds]
                mean, low, high = statistics.mean(ratios), min(ratios), max(ratios)
                line += f"; vs edf-drop {mean:.2f}x ({low:.2f}-{high:.2f}x)"
            lines.append(line)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default=",".join(map(str, EVALUATION_SEEDS)))
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of arrivals")
    parser.add_argument("--step-noise", type=float, default=0.3, metavar="CV")
    parser.add_argument("--deployments", default=",".join(DEPLOYMENTS))
    parser.add_argument("--rows", default="hyperflexis,hyperflexis-work,edf-drop")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs" / "sim_compare" / "near_bound.json"
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    deployments = args.deployments.split(",")
    tasks = [
        (row, deployment, seed, args.duration, args.step_noise)
        for deployment in deployments
        for row in args.rows.split(",")
        for seed in seeds
    ]
    started = time.perf_counter()
    bounds = {d: {s: bound_of(d, s, args.duration) for s in seeds} for d in deployments}
    print(f"fluid bounds: {bounds}", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        results = []
        for result in pool.map(search, tasks):
            print(
                f"{result['row']} {result['deployment']} seed {result['seed']}: "
                f"goodput@90 {result['goodput_at_90']:.1f}",
                flush=True,
            )
            results.append(result)
    print(report(results, bounds))
    wall_s = time.perf_counter() - started
    doc = {
        "seeds": seeds,
        "duration_s": args.duration,
        "step_noise_cv": args.step_noise,
        "bounds": bounds,
        "results": results,
        "wall_s": wall_s,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out} ({wall_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
