"""Simulator speed: the whole Azure LLM 2023 conversation trace (19,366 requests, ~1 hour) on 8
collocated Llama-3.1-8B instances on H100, hyperflexis scheduling and dispatch, against the issue's
target of at most 60 s of wall time.

    .venv/bin/python benchmarks/sim_speed.py [--trace PATH] [--instances 8] [--no-fast-forward]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from hyperflexis.core import SLOClasses
from hyperflexis.sim import Deployment, SimSetup, make_simulator
from hyperflexis.workloads import build_workload, parse_slo_mix

TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "azure_llm_2023_conv.csv"
TARGET_WALL_S = 60.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", type=Path, default=TRACE)
    parser.add_argument("--instances", type=int, default=8)
    parser.add_argument("--policy", default="hyperflexis")
    parser.add_argument("--no-fast-forward", action="store_true")
    args = parser.parse_args()

    classes = SLOClasses()
    workload = build_workload(
        seed=0,
        slo_mix=parse_slo_mix("interactive:3,standard:5,batch:2", classes),
        trace=args.trace,
    )
    setup = SimSetup(
        deployment=Deployment(num_mixed=args.instances),
        policy=args.policy,
        fast_forward=not args.no_fast_forward,
    )
    simulator = make_simulator(setup, classes, workload)
    started = time.perf_counter()
    result = simulator.run(workload)
    wall_s = time.perf_counter() - started
    summary = result.summary()
    print(
        f"{len(workload)} requests over {result.duration_s:.0f} s simulated on {args.instances} "
        f"x {setup.model} / {setup.hardware} ({setup.policy} + {setup.dispatcher_name}, "
        f"fast-forward {'on' if setup.fast_forward else 'off'})"
    )
    print(
        f"  steps {result.num_steps:,} ({result.num_fast_forward_steps:,} fast-forwarded), "
        f"attainment {summary['attainment']:.4f}"
    )
    print(
        f"  wall {wall_s:.1f} s = {len(workload) / wall_s:,.0f} simulated requests/s, "
        f"{result.num_steps / wall_s:,.0f} steps/s; target <= {TARGET_WALL_S:.0f} s: "
        f"{'met' if wall_s <= TARGET_WALL_S else 'MISSED'}"
    )
    return 0 if wall_s <= TARGET_WALL_S else 1


if __name__ == "__main__":
    sys.exit(main())
