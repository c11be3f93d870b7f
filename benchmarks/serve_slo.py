"""Live multi-SLO serving: `hyperflexis serve` with the hyperflexis policy and dispatcher against
vLLM-style fcfs with round-robin dispatch, same machine, same run, same requests.

Two servers (2 instances of the built-in tiny model each) run side by side; with `--deployment
pd`, three: hyperflexis and distserve (FCFS P/D, no chunking) each on 1 prefill + 1 decode
instance, against fcfs on 2 collocated ones (the ratio is hyperflexis P/D over fcfs). At every
rate of the sweep, the first requests of the Azure conversation trace (lengths scaled to the tiny
model), time-scaled to the rate for `--duration-s` seconds of arrivals, are replayed open loop
through the OpenAI API against one server, then the next, with the `hyperflexis bench` client.
Reported: attainment per rate, goodput@90 (the highest rate keeping 90% attainment,
interpolated) of each and their ratio (target >= 1.5x), and the server's own overhead per
request (HTTP parsing, tokenisation, SLO resolution, dispatch; target p50 <= 2 ms) as the
server measures it (`/debug/stats`).

SLO classes are the default ones (interactive 0.5 s / 40 ms, standard 2 s / 100 ms, batch 10 s /
300 ms, made for an 8B model on a GPU whose loaded decode step takes ~12.5 ms) scaled by this
machine's measured decode step: a short calibration first sends 8 requests at once to the fcfs
server and takes their median TPOT as the loaded step time (`calibrate`). On a machine shared with
other jobs that figure swings with their load; `--class-scale` fixes the scale instead.

    .venv/bin/python benchmarks/serve_slo.py [--deployment collocated|pd]
        [--rates 24,32,40,48,56,64,72] [--duration-s 15]
        [--repeats 1] [--class-scale S] [--tpot-margin 0.05]
        [--trace ../shared/traces/azure_llm_2023_conv.csv] [--out results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hyperflexis.bench.client import BenchRun, ClientConfig, run_benchmark
from hyperflexis.bench.metrics import goodput_at
from hyperflexis.bench.report import bench_summary
from hyperflexis.bench.seeds import EVALUATION_SEEDS
from hyperflexis.bench.server_info import correction_factor, served_model_id, server_overhead_ms
from hyperflexis.bench.server_process import ServerProcess, exit_on_sigterm
from hyperflexis.core.slo import DEFAULT_CLASSES, SLOClass, SLOClasses
from hyperflexis.scheduler.config import DEFAULT_TPOT_MARGIN
from hyperflexis.workloads import (
    RequestSpec,
    Workload,
    build_workload,
    make_workload,
    parse_slo_mix,
)

DEFAULT_TRACE = Path(__file__).resolve().parents[1] / ".." / "shared" / "traces"
DEFAULT_TRACE = DEFAULT_TRACE / "azure_llm_2023_conv.csv"
REFERENCE_STEP_S = 0.0125  # the loaded decode step the default classes were made for
COLLOCATED = ["--instances", "2"]
PD = ["--prefill", "1", "--decode", "1"]  # the same two instances, disaggregated
# --deployment -> system name -> (policy, dispatch, instances); the first is the baseline, the
# last is ours.
DEPLOYMENTS: dict[str, dict[str, tuple[str, str, list[str]]]] = {
    "collocated": {
        "fcfs+round-robin": ("fcfs", "round-robin", COLLOCATED),
        "hyperflexis": ("hyperflexis", "hyperflexis", COLLOCATED),
    },
    "pd": {
        "fcfs+round-robin": ("fcfs", "round-robin", COLLOCATED),
        "distserve-pd": ("distserve", "distserve", PD),
        "hyperflexis-pd": ("hyperflexis", "hyperflexis", PD),
    },
}
BASELINE = "fcfs+round-robin"
NUM_INSTANCES = 2


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """The trace-shaping flags this script and fidelity.py share: class mix and lengths."""
    parser.add_argument("--slo-mix", default="interactive:3,standard:5,batch:2")
    parser.add_argument("--length-scale", type=float, default=0.125, help="trace lengths x this")
    parser.add_argument("--max-prompt-len", type=int, default=512)
    parser.add_argument("--max-output-len", type=int, default=128)


def main() -> int:
    args = _parse_args()
    exit_on_sigterm()
    started = time.perf_counter()
    systems = DEPLOYMENTS[args.deployment]
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                ServerProcess(_server_args(policy, dispatch, instances, args.tpot_margin))
            )
            for name, (policy, dispatch, instances) in systems.items()
        }
        urls = {name: server.url for name, server in servers.items()}
        model = served_model_id(urls[BASELINE])
        step_s, calibration = calibrate(urls[BASELINE], model)
        scale = args.class_scale if args.class_scale is not None else step_s / REFERENCE_STEP_S
        calibration["class_scale_used"] = scale
        classes = scaled_classes(scale)
        print(f"calibration: {calibration}", flush=True)
        print("classes: " + _describe(classes), flush=True)
        sweep = run_sweep(args, urls, model, classes)
        overhead = {name: server_overhead_ms(url) for name, url in urls.items()}
    result = _result(args, calibration, classes, sweep, overhead)
    result["wall_s"] = time.perf_counter() - started
    _print(result)
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def _server_args(policy: str, dispatch: str, instances: list[str], tpot_margin: float) -> list[str]:
    return [
        "--tpot-margin",
        str(tpot_margin),
        *instances,
        "--threads",
        "1",
        "--policy",
        policy,
        "--dispatch",
        dispatch,
    ]


def calibrate(url: str, model: str) -> tuple[float, dict[str, float]]:
    """The decode step time of a loaded instance: the median TPOT of 8 requests sent at once
    (4 per instance; 128-token prompts, 48 output tokens). A CPU's step time grows with the
    batch, unlike a GPU's, so a lone request's step (also reported) would give targets that
    no batch can meet."""
    lone = [
        _calibration_run(url, model, [RequestSpec(f"lone-{i}", 0.0, 128, 48, "standard")])[0]
        for i in range(4)
    ]
    burst = [RequestSpec(f"burst-{i}", 0.0, 128, 48, "standard") for i in range(8)]
    step_s = statistics.median(tpot for _, tpot in _calibration_run(url, model, burst))
    return step_s, {
        # The first lone request warms the instance up.
        "lone_decode_step_ms": statistics.median(tpot for _, tpot in lone[1:]) * 1e3,
        "lone_ttft_128_tokens_ms": statistics.median(ttft for ttft, _ in lone[1:]) * 1e3,
        "loaded_decode_step_ms": step_s * 1e3,
        "class_scale": step_s / REFERENCE_STEP_S,
    }


def _calibration_run(url: str, model: str, specs: list[RequestSpec]) -> list[tuple[float, float]]:
    """(TTFT, TPOT) of each request, sent at once, with targets no request can miss."""
    classes = SLOClasses((SLOClass("standard", 60.0, 60.0, 1),))
    run = run_benchmark(make_workload(specs), classes, _config(url, model))
    times = []
    for result in run.results:
        ttft_s, tpot_s = result.record.ttft_s, result.record.tpot_s
        if ttft_s is None or tpot_s is None:
            raise RuntimeError(f"calibration request failed: {result.error}")
        times.append((ttft_s, tpot_s))
    return times


def scaled_classes(factor: float) -> SLOClasses:
    return SLOClasses(
        tuple(
            SLOClass(c.name, c.ttft_s * factor, c.tpot_s * factor, c.priority, c.late)
            for c in DEFAULT_CLASSES
        )
    )


def run_sweep(
    args: argparse.Namespace, urls: dict[str, str], model: str, classes: SLOClasses
) -> dict[str, list[dict[str, Any]]]:
    """Per system, one row per rate and repeat. The systems take turns at each rate, in order,
    then in reverse order at the next (ABBA), so a slow spell of a shared machine hits all
    alike; repeats walk the rates again with the turns swapped."""
    mix = parse_slo_mix(args.slo_mix, classes)
    sweep: dict[str, list[dict[str, Any]]] = {name: [] for name in urls}
    for repeat in range(args.repeats):
        for index, rate in enumerate(args.rates):
            workload = _workload(args, mix, rate)
            order = list(urls) if (index + repeat) % 2 == 0 else list(reversed(urls))
            for name in order:
                run = run_benchmark(workload, classes, _config(urls[name], model))
                row = _row(run, rate, repeat)
                if name == list(urls)[-1]:  # ours: how much slower than its profile it ran
                    row["correction_factor"] = correction_factor(urls[name])
                sweep[name].append(row)
                print(
                    f"rate {rate:5.2f} {name:<17} attainment {row['attainment']:6.1%} "
                    f"(TTFT p50 {row['ttft_p50_ms'] or math.nan:.0f} ms, "
                    f"TPOT p50 {row['tpot_p50_ms'] or math.nan:.1f} ms, "
                    f"send lag p99 {row['send_lag_p99_ms']:.1f} ms)  "
                    + "  ".join(_class_result(row, c) for c in row["attainment_by_class"]),
                    flush=True,
                )
    return sweep


def _workload(args: argparse.Namespace, mix: Any, rate: float) -> Workload:
    return build_workload(
        seed=args.seed,
        slo_mix=mix,
        trace=args.trace,
        num_requests=max(round(rate * args.duration_s), 1),
        rate_rps=rate,
        length_scale=args.length_scale,
        max_prompt_len=args.max_prompt_len,
        max_output_len=args.max_output_len,
    )


def _row(run: BenchRun, rate: float, repeat: int) -> dict[str, Any]:
    summary = bench_summary(run, NUM_INSTANCES * run.duration_s)
    return {
        "rate_rps": rate,
        "repeat": repeat,
        "attainment": summary["attainment"],
        "attainment_by_class": summary["attainment_by_class"],
        "counts_by_class": summary["counts_by_class"],
        "num_rejected": summary["num_rejected"],
        "num_failed": summary["num_failed"],
        "goodput_rps": summary["goodput_rps"],
        "ttft_p50_ms": _ms(summary["ttft_s"]["p50"]),
        "ttft_p90_ms": _ms(summary["ttft_s"]["p90"]),
        "tpot_p50_ms": _ms(summary["tpot_s"]["p50"]),
        "e2e_mean_s": summary["e2e_s"]["mean"],
        "duration_s": summary["duration_s"],
        "total_output_tokens": summary["total_output_tokens"],
        "send_lag_p99_ms": _ms(summary["send_lag_s"]["p99"]),
        "server_overhead_ms": summary["server_overhead_ms"],
        "errors": dict(Counter(r.error[:120] for r in run.results if r.error)),
    }


def mean_by_rate(rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    """(rate, attainment averaged over its repeats), by rate."""
    by_rate: dict[float, list[float]] = {}
    for row in rows:
        by_rate.setdefault(row["rate_rps"], []).append(row["attainment"])
    return sorted((rate, statistics.fmean(values)) for rate, values in by_rate.items())


def _result(
    args: argparse.Namespace,
    calibration: dict[str, float],
    classes: SLOClasses,
    sweep: dict[str, list[dict[str, Any]]],
    overhead: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    means = {name: mean_by_rate(rows) for name, rows in sweep.items()}
    goodput = {name: goodput_at(points, 0.9) for name, points in means.items()}
    baseline, ours = goodput[BASELINE], goodput[list(sweep)[-1]]
    return {
        "command": " ".join(sys.argv),
        "deployment": args.deployment,
        "num_instances": NUM_INSTANCES,
        "arrivals_s_per_rate": args.duration_s,
        "length_scale": args.length_scale,
        "calibration": calibration,
        "classes": {
            c.name: {"ttft_ms": c.ttft_s * 1e3, "tpot_ms": c.tpot_s * 1e3, "priority": c.priority}
            for c in classes.values()
        },
        "sweep": sweep,
        "goodput_at_90_rps": goodput,
        "goodput_ratio": ours / baseline if baseline > 0 else None,
        "attainment_by_rate": {name: dict(points) for name, points in means.items()},
        # Less sensitive to one noisy point than goodput@90: the sweep's mean attainment.
        "mean_attainment": {
            name: statistics.fmean(a for _, a in points) for name, points in means.items()
        },
        "server_overhead_ms": overhead,
    }


def _print(result: dict[str, Any]) -> None:
    names = list(result["sweep"])
    print(
        "\n| rate (req/s) | run | "
        + " | ".join(f"{n} attainment" for n in names)
        + " | "
        + " | ".join(f"{n} overhead p50 / p99 (ms)" for n in names)
        + " |"
    )
    print("|---:|---:|" + "---:|" * 2 * len(names))
    for row in zip(*result["sweep"].values(), strict=True):
        attainments = " | ".join(f"{r['attainment']:.1%}" for r in row)
        overheads = " | ".join(
            f"{r['server_overhead_ms']['p50'] or math.nan:.2f} / "
            f"{r['server_overhead_ms']['p99'] or math.nan:.2f}"
            for r in row
        )
        print(f"| {row[0]['rate_rps']:g} | {row[0]['repeat'] + 1} | {attainments} | {overheads} |")
    if any(row["repeat"] for row in result["sweep"][names[0]]):
        print("\nmean over the runs: " + _attainment_line(result["attainment_by_rate"]))
    goodput = result["goodput_at_90_rps"]
    ratio = result["goodput_ratio"]
    print(
        "\ngoodput@90: "
        + ", ".join(f"{k} {v:.2f} req/s" for k, v in goodput.items())
        + (f"; ratio {ratio:.2f}x" if ratio is not None else "; baseline never reaches 90%")
    )
    print(
        "mean attainment over the sweep: "
        + ", ".join(f"{k} {v:.1%}" for k, v in result["mean_attainment"].items())
    )
    for name, stats in result["server_overhead_ms"].items():
        print(
            f"server overhead {name}: p50 {stats['p50']:.2f} ms, p90 {stats['p90']:.2f} ms, "
            f"p99 {stats['p99']:.2f} ms over {stats['count']} requests"
        )
    print(f"wall time {result['wall_s']:.0f} s")


def _class_result(row: dict[str, Any], name: str) -> str:
    counts = row["counts_by_class"][name]
    ttft, tpot = counts["num_missed_ttft"], counts["num_missed_tpot"]
    share = row["attainment_by_class"][name]
    return f"{name} {share:.0%} (missed TTFT {ttft}, TPOT {tpot} of {counts['num_requests']})"


def _attainment_line(by_rate: dict[str, dict[float, float]]) -> str:
    return "; ".join(
        f"{name} " + " ".join(f"{rate:g}:{value:.1%}" for rate, value in points.items())
        for name, points in by_rate.items()
    )


def _config(url: str, model: str) -> ClientConfig:
    return ClientConfig(base_url=url, model=model, timeout_s=300.0, show_progress=False)


def _describe(classes: SLOClasses) -> str:
    return ", ".join(
        f"{c.name} TTFT {c.ttft_s * 1e3:.0f} ms / TPOT {c.tpot_s * 1e3:.1f} ms"
        for c in classes.values()
    )


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument(
        "--deployment",
        choices=list(DEPLOYMENTS),
        default="collocated",
        help="collocated: hyperflexis against fcfs, 2 instances each; pd: hyperflexis and "
        "distserve on 1 prefill + 1 decode instance against fcfs on 2 collocated ones",
    )
    parser.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[24, 32, 40, 48, 56, 64, 72],
    )
    parser.add_argument(
        "--duration-s", type=float, default=15.0, help="seconds of arrivals per rate"
    )
    parser.add_argument(
        "--repeats", type=int, default=1, help="walk the rates this many times; means are used"
    )
    add_workload_args(parser)
    parser.add_argument(
        "--class-scale",
        type=float,
        default=None,
        help="scale the default classes by this instead of by the calibration (on a shared "
        "machine the calibration swings with other jobs' load)",
    )
    parser.add_argument(
        "--tpot-margin",
        type=float,
        default=DEFAULT_TPOT_MARGIN,
        help="hyperflexis's planning margin on TPOT deadlines (`hyperflexis serve --tpot-margin`)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=EVALUATION_SEEDS[0],
        help="workload seed (default: the first evaluation seed, hyperflexis.bench.seeds)",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args()
    if len(set(args.rates)) != len(args.rates) or min(args.rates) <= 0:
        parser.error(f"--rates must be distinct and > 0, got {args.rates}")
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    return args


if __name__ == "__main__":
    sys.exit(main())
