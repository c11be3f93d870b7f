"""How the simulator's cost saving moves with the length of the load cycle (issue 15): the
`hyperflexis` scaler against `static` right-sized (the fewest instances that attain >= 99%
the whole time) on `scaler_compare.py`'s day (the Azure conversation trace's arrivals shaped
`1 + (ratio - 1) sin^4(pi t / T)`, mean `--day-rate`), collocated Llama-3.1-8B on H100, the
same requests' shape squeezed into each `--cycles` length.

Each cycle length runs `hyperflexis` (from one instance) and `static` at increasing sizes from
one below `hyperflexis`'s peak until one attains 99%; the saving is 1 - hyperflexis's
instance-seconds / right-sized static's. Printed as a markdown table; `--out` writes the runs.

    PYTHONPATH=src .venv/bin/python benchmarks/scaler_cycles.py [--cycles 5,20] [--seed 0]
        [--trace ../shared/traces/azure_llm_2023_conv.csv] [--out cycles.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from scaler_compare import TRACE, Run, execute

TARGET = 0.99


def cycle(args: argparse.Namespace, minutes: float) -> dict[str, Any]:
    """One cycle length: hyperflexis, then static sized up until it holds the target."""

    def run(scaler: str, size: tuple[int, ...] = ()) -> dict[str, Any]:
        spec = Run(
            "day", "mixed", scaler, scaler, minutes, args.seed, args.day_rate,
            args.peak_ratio, 25.0, args.trace, size,
        )  # fmt: skip
        row = execute(spec)
        row.pop("time_series", None)
        return row

    scaled = run("hyperflexis")
    size = max(scaled["peak_instances"] - 1, 1)
    statics = []
    while True:
        statics.append(run("static", (size,)))
        if statics[-1]["attainment"] >= TARGET or size >= scaled["peak_instances"]:
            break
        size += 1
    right = statics[-1]
    return {
        "minutes": minutes,
        "hyperflexis": scaled,
        "statics": statics,
        "right_sized": size,
        "saving": 1 - scaled["instance_seconds"] / right["instance_seconds"],
        "attainment_points": (scaled["attainment"] - right["attainment"]) * 100,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", default="5,20", help="cycle lengths, minutes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--day-rate", type=float, default=20.0, help="mean requests/s")
    parser.add_argument("--peak-ratio", type=float, default=5.0, help="peak / trough shape")
    parser.add_argument("--trace", default=str(TRACE))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    rows = [cycle(args, float(m)) for m in args.cycles.split(",")]
    print(
        "| cycle (min) | hyperflexis attainment | hyperflexis instance-s | peak | decisions "
        "| right-sized static | static attainment | static instance-s | saving |"
    )
    print("|---:|---:|---:|---:|---|---:|---:|---:|---:|")
    for row in rows:
        scaled, right = row["hyperflexis"], row["statics"][-1]
        decisions = ", ".join(f"{k} {v}" for k, v in scaled["num_decisions"].items())
        print(
            f"| {row['minutes']:g} | {scaled['attainment']:.4f} | "
            f"{scaled['instance_seconds']:.0f} | {scaled['peak_instances']} | {decisions} | "
            f"{row['right_sized']} | {right['attainment']:.4f} | "
            f"{right['instance_seconds']:.0f} | {row['saving']:.1%} |"
        )
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
