"""Mean and p90 end-to-end latency, attainment and rejections of every row of a `sim_compare.py`
results file at two rates: the swept rate nearest the best baseline's goodput@90 and the one
nearest twice it (issue 18's "done when"). Attainment counts a rejected request as missed; the
latency figures are over the requests that finished.

    .venv/bin/python benchmarks/latency_at_rates.py docs/sim_compare/fair/results.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def nearest(rates: list[float], target: float) -> float:
    return min(rates, key=lambda rate: (abs(rate - target), rate))


def table(deployment: str, body: dict[str, Any]) -> list[str]:
    """One markdown table: a row per policy row, a column group per chosen rate."""
    analysis, runs = body["analysis"], body["runs"]
    best = analysis["best_baseline_goodput"]
    goodput = float(analysis["goodput_at_90"][best])
    rates = sorted({float(run["rate"]) for run in runs})
    chosen = (nearest(rates, goodput), nearest(rates, 2.0 * goodput))
    by_key = {(run["row"], float(run["rate"])): run for run in runs}
    lines = [
        f"{deployment}: best baseline {best}, goodput@90 {goodput:.1f} req/s; "
        f"rates {chosen[0]:g} and {chosen[1]:g} req/s",
        "",
        "| row | "
        + " | ".join(f"at {r:g}: attainment, rejected, mean / p90 E2E s" for r in chosen)
        + " |",
        "|---|" + "---|" * len(chosen),
    ]
    for row in sorted({run["row"] for run in runs}):
        cells = []
        for rate in chosen:
            run = by_key.get((row, rate))
            if run is None:
                cells.append("not run")
                continue
            e2e = run["e2e_s"]
            cells.append(
                f"{run['attainment']:.3f}, {run['num_rejected']}, "
                f"{e2e['mean']:.2f} / {e2e['p90']:.2f}"
            )
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a sim_compare.py results.json")
    results = json.loads(parse_path(parser.parse_args().results).read_text())
    for deployment in ("collocated-4", "pd-2p2d"):
        if deployment in results:
            print("\n".join(table(deployment, results[deployment])) + "\n")


def parse_path(path: Path) -> Path:
    if not path.is_file():
        raise SystemExit(f"invalid results file: {path} does not exist")
    return path


if __name__ == "__main__":
    main()
