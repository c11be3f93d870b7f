"""`python -m hyperflexis.demo` (`make demo`): a live multi-SLO benchmark on the built-in model.

Starts `hyperflexis serve` (two instances of the built-in tiny model, the hyperflexis scheduling
policy and dispatcher) on a free loopback port, sends it an open-loop Poisson stream of requests
from three SLO classes through the OpenAI API with the `hyperflexis bench` client, prints
attainment and latency per class, and stops the server, on success, error or Ctrl-C alike.

The targets (`DEMO_CLASSES`) are the default classes' scaled to the tiny model on a laptop CPU,
whose decode steps take a few ms to a few tens of ms: the point is how the scheduler trades the
classes off under load, not absolute speed. The first run also profiles the model's step times
once (cached), which adds about half a minute.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hyperflexis.bench.client import ClientConfig, run_benchmark
from hyperflexis.bench.report import bench_summary, class_table
from hyperflexis.bench.server_info import served_model_id
from hyperflexis.bench.server_process import ServerProcess, exit_on_sigterm
from hyperflexis.bench.slo_file import write_slo_classes
from hyperflexis.core.slo import SLOClass, SLOClasses
from hyperflexis.workloads import Workload, build_workload, parse_lengths, parse_slo_mix, poisson

# Interactive needs its first token fast and a steady stream, batch only needs to finish.
# `late: reject` lets the server turn away interactive requests it can no longer serve in time
# instead of spending capacity on them.
DEMO_CLASSES = SLOClasses(
    (
        SLOClass("interactive", ttft_s=0.150, tpot_s=0.025, priority=0, late="reject"),
        SLOClass("standard", ttft_s=0.600, tpot_s=0.060, priority=1),
        SLOClass("batch", ttft_s=3.0, tpot_s=0.200, priority=2),
    )
)
SLO_MIX = "interactive:3,standard:5,batch:2"
PROMPT_LENS = "uniform:lo=32,hi=384"
OUTPUT_LENS = "uniform:lo=16,hi=128"
POLICY = "hyperflexis"
DISPATCH = "hyperflexis"
NUM_INSTANCES = 2
# (requests, requests per second): ~22 s of load; --quick: ~3 s, for tests.
FULL_LOAD = (56, 2.5)
QUICK_LOAD = (10, 3.0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m hyperflexis.demo",
        description="Serve the built-in model and benchmark it with multi-SLO traffic.",
    )
    parser.add_argument("--quick", action="store_true", help="a few seconds of load (for tests)")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument(
        "--profile", type=Path, default=None, help="step profile for the server (default: cached)"
    )
    parser.add_argument("--verbose", action="store_true", help="show the server's output")
    return parser.parse_args(argv)


def demo_workload(quick: bool, seed: int) -> Workload:
    num_requests, rate_rps = QUICK_LOAD if quick else FULL_LOAD
    return build_workload(
        seed=seed,
        slo_mix=parse_slo_mix(SLO_MIX, DEMO_CLASSES),
        arrival=poisson(rate_rps),
        prompt_lens=parse_lengths(PROMPT_LENS),
        output_lens=parse_lengths(OUTPUT_LENS),
        num_requests=num_requests,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    exit_on_sigterm()
    try:
        return _run(args)
    except KeyboardInterrupt:
        print("\ninterrupted; the server was stopped", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    workload = demo_workload(args.quick, args.seed)
    started = time.perf_counter()
    print(
        f"HyperFlexis demo: starting `hyperflexis serve` with {NUM_INSTANCES} instances of the "
        f"built-in tiny model (policy {POLICY}, dispatch {DISPATCH})...",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="hyperflexis-demo-") as tmp:
        classes_file = write_slo_classes(DEMO_CLASSES, Path(tmp) / "slo_classes.json")
        server_args = ["--instances", str(NUM_INSTANCES), "--policy", POLICY]
        server_args += ["--dispatch", DISPATCH, "--slo-classes", str(classes_file)]
        if args.profile is not None:
            server_args += ["--profile", str(args.profile)]
        with ServerProcess(server_args, echo=args.verbose, ready_timeout_s=300.0) as server:
            summary = _benchmark(server.url, workload, started)
    print()
    print(class_table(summary))
    print(
        f"\nattainment {summary['attainment']:.0%} of {summary['num_requests']} requests, "
        f"goodput {summary['goodput_rps']:.2f} req/s, {summary['num_failed']} failed; "
        f"server stopped; total {time.perf_counter() - started:.1f} s"
    )
    return 0 if summary["num_failed"] == 0 else 1


def _benchmark(url: str, workload: Workload, started: float) -> dict[str, Any]:
    model = served_model_id(url)
    print(f"serving {model} at {url} (ready after {time.perf_counter() - started:.1f} s)")
    targets = ", ".join(
        f"{c.name} {c.ttft_s * 1e3:.0f}/{c.tpot_s * 1e3:.0f} ms" for c in DEMO_CLASSES.values()
    )
    print(
        f"sending {len(workload)} requests over {workload[-1].arrival_s:.0f} s (Poisson; mix "
        f"{SLO_MIX}; prompts {PROMPT_LENS}, outputs {OUTPUT_LENS} tokens; TTFT/TPOT targets: "
        f"{targets})",
        flush=True,
    )
    config = ClientConfig(base_url=url, model=model, timeout_s=120.0)
    run = run_benchmark(workload, DEMO_CLASSES, config)
    return bench_summary(run, instance_seconds=NUM_INSTANCES * run.duration_s)


if __name__ == "__main__":
    sys.exit(main())
