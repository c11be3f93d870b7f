"""`hyperflexis report RESULTS`: every summary figure of a run recomputed from its per-request
records alone (`bench.recompute`), checked against the stored summary, and printed as per-class
tables in both TPOT views, with a plot.

RESULTS is what `hyperflexis simulate` (one run or a sweep) or `hyperflexis bench --jsonl`
wrote; the records file is named in it. Exit status 1 when a recomputed figure differs.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HELP = "Recompute a run's summary from its per-request records; per-class tables and plots."
GOODPUT_TARGET = 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("results", type=Path, help="results JSON of simulate or bench")
    parser.add_argument(
        "--plot", type=Path, default=None, help="PNG to write (default: RESULTS.report.png)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        doc = json.loads(args.results.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read results {args.results}: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{args.results}: expected a JSON object")
    plot = args.plot or args.results.with_suffix(".report.png")
    if "runs" in doc:
        mismatches = report_sweep(args.results, doc, plot)
    else:
        mismatches = report_run(args.results, doc, plot)
    if mismatches:
        print("recomputed figures that differ from the stored summary: " + ", ".join(mismatches))
        return 1
    print(f"every recomputed figure equals the stored summary; wrote {plot}")
    return 0


def recompute_run(results: Path, doc: dict[str, Any]) -> tuple[dict[str, Any], list[Any]]:
    """One run's recomputed summary and its records."""
    from hyperflexis.bench.recompute import duration_from_rows, recompute, records_path
    from hyperflexis.bench.records import read_rows, records_from_rows

    path = records_path(results, doc)
    rows = read_rows(path)
    records = records_from_rows(rows, str(path))
    summary = recompute(records, duration_from_rows(rows), float(doc.get("instance_seconds", 0)))
    return summary, records


def report_run(results: Path, doc: dict[str, Any], plot: Path) -> list[str]:
    from hyperflexis.bench.plots import plot_run
    from hyperflexis.bench.recompute import differences
    from hyperflexis.bench.report import class_table

    summary, records = recompute_run(results, doc)
    print(class_table(summary))
    print(
        f"goodput {summary['goodput_rps']:.3g} req/s (per-token deadlines "
        f"{summary['goodput_per_token_rps']:.3g}) over {summary['duration_s']:.1f} s"
    )
    plot_run(records, plot, title=str(results))
    return differences(doc, summary)


def report_sweep(results: Path, doc: dict[str, Any], plot: Path) -> list[str]:
    from hyperflexis.bench.metrics import goodput_at
    from hyperflexis.bench.plots import plot_attainment_vs_rate
    from hyperflexis.bench.recompute import differences
    from hyperflexis.commands.simulate_report import sweep_table

    mismatches: list[str] = []
    runs = []
    for stored in doc["runs"]:
        summary, _ = recompute_run(results, stored)
        name = f"{stored['policy']}@{stored['rate']:g}"
        mismatches += [f"{name}: {key}" for key in differences(stored, summary)]
        runs.append({"policy": stored["policy"], "rate": stored["rate"], **summary})
    print(sweep_table(runs))
    for run in runs:
        by_class = ", ".join(
            f"{name} {row['attainment']:.3f}/{row['attainment_per_token']:.3f}"
            for name, row in run["latency_by_class"].items()
        )
        print(f"  {run['policy']}@{run['rate']:g} per class (mean/per-token): {by_class}")
    series: dict[str, list[tuple[float, float]]] = {}
    for key, view in (("attainment", ""), ("attainment_per_token", ", per-token")):
        goodput: dict[str, float] = {}
        for policy in dict.fromkeys(run["policy"] for run in runs):
            points = [(r["rate"], r[key]) for r in runs if r["policy"] == policy]
            series[policy + view] = points
            goodput[policy] = goodput_at(points, GOODPUT_TARGET)
            print(f"goodput@{GOODPUT_TARGET:.0%}{view} {policy}: {goodput[policy]:.3g} req/s")
        stored_key = "goodput_at_90" + ("_per_token" if view else "")
        if stored_key in doc and differences({"g": doc[stored_key]}, {"g": goodput}):
            mismatches.append(stored_key)
    if "goodput_bound_at_90" in doc:
        bound = doc["goodput_bound_at_90"]["rate_rps"]
        print(f"fluid bound on goodput@{GOODPUT_TARGET:.0%} (from the results): {bound:.3g} req/s")
    plot_attainment_vs_rate(series, plot, title=str(results))
    return mismatches
