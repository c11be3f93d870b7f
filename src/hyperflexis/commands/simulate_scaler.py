"""`hyperflexis simulate --scaler NAME [--min-instances N --max-instances M]`: one run whose
cluster starts as `--instances` (or `--prefill`/`--decode`) and then scales as the named scaler
decides (DESIGN.md §6). The results add `instance_seconds` integrated over the instances' lives
(starting and draining ones count), `cost_usd`, the scaling decisions and a `time_series`
(instances by role, demand, attainment per interval), plotted to a PNG next to `--out`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hyperflexis.commands.simulate_report import one_line, progress, write_json

DEFAULT_MIN_INSTANCES = 1
DEFAULT_MAX_INSTANCES = 16
DEFAULT_CONTROL_INTERVAL_S = 10.0
DEFAULT_BIN_S = 60.0
DEFAULT_DRAIN_DEADLINE_S = 5.0  # cluster.migration's, spelled here for a light import


def add_arguments(parser: argparse.ArgumentParser) -> None:
    scaling = parser.add_argument_group("scaling")
    scaling.add_argument(
        "--scaler",
        default=None,
        help="scale the cluster with this scaler: hyperflexis, no-role-switch, threshold, static "
        "(default: a fixed cluster)",
    )
    scaling.add_argument(
        "--min-instances",
        type=int,
        default=None,
        help=f"with --scaler: fewest instances per pool (default: {DEFAULT_MIN_INSTANCES})",
    )
    scaling.add_argument(
        "--max-instances",
        type=int,
        default=None,
        help=f"with --scaler: most instances per pool (default: {DEFAULT_MAX_INSTANCES})",
    )
    scaling.add_argument(
        "--control-interval",
        type=float,
        default=None,
        help=f"with --scaler: seconds between decisions (default: {DEFAULT_CONTROL_INTERVAL_S:g})",
    )
    scaling.add_argument(
        "--drain-deadline-s",
        type=float,
        default=None,
        help="with --scaler: a draining instance's decodes that would take longer than this "
        "after the decision migrate, KV and all, to another instance, as the server's "
        f"--drain-deadline-s (default: {DEFAULT_DRAIN_DEADLINE_S:g}; inf: none migrates)",
    )
    scaling.add_argument(
        "--series-interval",
        type=float,
        default=None,
        help=f"with --scaler: seconds per time-series interval (default: {DEFAULT_BIN_S:g})",
    )


def check_arguments(args: argparse.Namespace) -> None:
    """The scaling options only make sense with `--scaler`, and not with a sweep."""
    scaling_only = {
        "--min-instances": args.min_instances,
        "--max-instances": args.max_instances,
        "--control-interval": args.control_interval,
        "--drain-deadline-s": args.drain_deadline_s,
        "--series-interval": args.series_interval,
    }
    if args.scaler is None:
        given = [name for name, value in scaling_only.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)} need --scaler")
        return
    if args.policies is not None or args.sweep_rates is not None:
        raise ValueError("--scaler runs one simulation: it cannot be combined with a sweep")


def run(args: argparse.Namespace, setup: Any, classes: Any, workloads: Any) -> int:
    """The scaled run of `hyperflexis simulate`; `setup` is its `SimSetup` (the initial
    cluster), `workloads` its workload maker."""
    from hyperflexis.bench.scaling_plot import plot_scaling
    from hyperflexis.sim.elastic_setup import ScalingSetup, simulate_elastic

    check_arguments(args)
    scaling = ScalingSetup(
        scaler=args.scaler,
        min_instances=_pick(args.min_instances, DEFAULT_MIN_INSTANCES),
        max_instances=_pick(args.max_instances, DEFAULT_MAX_INSTANCES),
        control_interval_s=_pick(args.control_interval, DEFAULT_CONTROL_INTERVAL_S),
        link_policy=args.links,
        drain_deadline_s=_pick(args.drain_deadline_s, DEFAULT_DRAIN_DEADLINE_S),
    )
    _check_initial_cluster(setup.deployment, scaling)
    bin_s = _pick(args.series_interval, DEFAULT_BIN_S)
    if not bin_s > 0:
        raise ValueError(f"invalid --series-interval {bin_s}: must be > 0")
    workload = workloads.make(args.rate)
    with progress(len(workload), "simulating") as on_progress:
        doc = simulate_elastic(setup, scaling, classes, workload, on_progress, bin_s=bin_s)
    doc["rate_rps"] = args.rate
    doc["seed"] = workloads.seed
    out = Path(args.out)
    plot = Path(args.plot) if args.plot else out.with_suffix(".png")
    write_json(out, doc)
    plot.parent.mkdir(parents=True, exist_ok=True)
    title = f"{setup.model} on {setup.hardware}, scaler {scaling.scaler}"
    plot_scaling({scaling.scaler: doc["time_series"]}, plot, title=title)
    print(one_line(doc))
    print(
        f"scaler {scaling.scaler}: {doc['instance_seconds']:.0f} instance-seconds, peak "
        f"{doc['peak_instances']} instances, decisions {doc['num_decisions']}, "
        f"{doc['num_migrations']} migrations"
    )
    print(f"wrote {plot}")
    print(f"wrote {out}")
    return 0


def _pick(value: Any, default: Any) -> Any:
    return default if value is None else value


def _check_initial_cluster(deployment: Any, scaling: Any) -> None:
    counts = (
        {"prefill": deployment.num_prefill, "decode": deployment.num_decode}
        if deployment.is_disaggregated
        else {"mixed": deployment.num_mixed}
    )
    for role, count in counts.items():
        if not scaling.min_instances <= count <= scaling.max_instances:
            raise ValueError(
                f"the initial {role} pool has {count} instances, outside --min-instances "
                f"{scaling.min_instances} .. --max-instances {scaling.max_instances}"
            )
