"""Fidelity: one trace live and in the simulator, request for request (issue 18, item 7).

At each rate, the first `rate x --duration-s` requests of the Azure conversation trace
(time-scaled to the rate, lengths x0.125 as `serve_slo.py` has them, SLO mix 3:5:2) are written
to a JSON-lines workload file, read back, and that one request list is replayed:

- live: open loop through the OpenAI API (`hyperflexis bench`'s client, prompts of exactly the
  listed token counts) against `hyperflexis serve` on this CPU, the default tiny model, two
  instances, one torch thread each, the hyperflexis policy and dispatcher, on the profile given
  (default: fitted here first with `hyperflexis profile --quick`, as `serve` fits a missing one);
  the classes are the defaults calibrated to the machine as `serve_slo.py` does them;
- simulated: twins of that deployment (two instances with the live instances' own KV block
  count) that plan with the profile times the live instances' mean online correction over the
  rate (what their schedulers planned with) and charge each step what the live instances
  measured over the same rate (`TWINS`: the pooled or per-kind mean ratio and CV from their
  `step_ratio_moments`, or the model refitted on their steps from `step_fit_moments`, plus the
  response path latency the lightest rate shows).

Both runs' per-request records (written beside the results) are summarised by the same code
(`hyperflexis report`'s recomputation) and compared by `hyperflexis.bench.fidelity`: per class,
attainment (target: within 3 points at every rate) and p50 / p90 of TTFT and TPOT (target:
within 10%, goal 5%, at the rates where the live run attains >= 90%).

    .venv/bin/python benchmarks/fidelity.py [--rates 1,2,4,6,8] [--duration-s 60]
        [--class-scale S] [--profile PATH] [--out-dir /tmp/hf-fidelity] [--twins-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from hyperflexis.bench.client import ClientConfig, run_benchmark
from hyperflexis.bench.fidelity import (
    PointComparison,
    StepSpread,
    Targets,
    TwinNoise,
    compare_point,
    comparison_json,
    fit_window,
    markdown_table,
    moments_by_instance,
    response_latency,
    scaled_profile,
    step_spread,
    twin_noise,
    verdict,
    write_refit,
)
from hyperflexis.bench.live_steps import StepSampler
from hyperflexis.bench.prompts import PromptFactory, tokenizer_counter
from hyperflexis.bench.recompute import duration_from_rows, recompute
from hyperflexis.bench.records import read_rows, records_from_rows, write_rows
from hyperflexis.bench.report import request_row
from hyperflexis.bench.seeds import EVALUATION_SEEDS
from hyperflexis.bench.server_info import instance_rows, served_model_id
from hyperflexis.bench.server_process import ServerProcess, exit_on_sigterm
from hyperflexis.core.slo import DEFAULT_CLASSES, SLOClass, SLOClasses
from hyperflexis.engine import default_model_path
from hyperflexis.sim.deployment import Deployment
from hyperflexis.sim.setup import SimSetup, simulate_with_records
from hyperflexis.workloads import build_workload, load_workload, parse_slo_mix, save_workload
from hyperflexis.workloads.spec import Workload
from serve_slo import (  # this folder's
    DEFAULT_TRACE,
    REFERENCE_STEP_S,
    add_workload_args,
    calibrate,
    scaled_classes,
)

NUM_INSTANCES = 2
WARM_UP_S = 3.0  # of arrivals at the first rate before the sweep, not compared
# Twin name -> (what it is, how its steps are charged, whether it adds the response latency
# measured at the lightest rate). Every twin plans with the profile x the live correction.
TWINS = {
    "pooled": ("every step the pooled measured mean ratio, its CV as noise", "pooled", False),
    "per-kind": ("prefill and decode-only steps each their own mean and CV", "per-kind", False),
    "refit": ("steps take the model refitted on the live steps, its CV as noise", "refit", False),
    "refit+latency": (
        "as refit, tokens reach the client the response latency later",
        "refit",
        True,
    ),
}
LATENCY_BASE = "refit"  # the twin whose lightest-rate TTFT gap gives the response latency


def main() -> int:
    args = _parse_args()
    exit_on_sigterm()
    started = time.perf_counter()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.twins_only:  # the live half of an earlier run, from its files
        doc = json.loads((args.out_dir / "fidelity.json").read_text())
        profile, live, classes = Path(doc["profile"]), doc["runs"], _classes(doc["classes"])
        head = {k: doc[k] for k in ("command", "profile", "class_scale", "classes", "load_average")}
    else:
        profile = args.profile or fit_profile(args.out_dir / "profile.json")
        load_before = os.getloadavg()
        scale, classes, live = run_live(args, profile)
        head = {
            "command": " ".join(sys.argv),
            "profile": str(profile),
            "class_scale": scale,
            "classes": {c.name: [c.ttft_s, c.tpot_s] for c in classes.values()},
            "load_average": {"before": load_before, "after": os.getloadavg()},
        }
    latency_s = _response_latency(args, live[0], profile, classes)
    points = {
        name: [
            twin_point(args, run, profile, classes, mode, latency_s if late else 0.0)
            for run in live
        ]
        for name, (_, mode, late) in TWINS.items()
    }
    result = {
        **head,
        "runs": live,
        "response_latency_s": latency_s,
        "comparison": {k: [comparison_json(p) for p in v] for k, v in points.items()},
        "verdict": {k: verdict(v, Targets()) for k, v in points.items()},
        "wall_s": time.perf_counter() - started,
    }
    (args.out_dir / "fidelity.json").write_text(json.dumps(result, indent=1) + "\n")
    for name, (what, _, _) in TWINS.items():
        print(f"\n{name} twin ({what}):\n" + markdown_table(points[name]))
        print(f"verdict, {name} twin: " + json.dumps(result["verdict"][name]))
    print(f"response latency (lightest rate): {latency_s * 1e3:.1f} ms")
    print(f"load average {result['load_average']}; wall time {result['wall_s']:.0f} s")
    return 0


def run_live(
    args: argparse.Namespace, profile: Path
) -> tuple[float, SLOClasses, list[dict[str, Any]]]:
    """The live half: the server on `profile`, its classes calibrated, every rate replayed."""
    server_args = ["--instances", str(NUM_INSTANCES), "--threads", "1", "--profile", str(profile)]
    server_args += ["--policy", "hyperflexis", "--dispatch", "hyperflexis"]
    with ServerProcess(server_args) as server:
        model = served_model_id(server.url)
        scale = args.class_scale
        if scale is None:  # as serve_slo.py: the classes x the loaded decode step / 12.5 ms
            step_s, calibration = calibrate(server.url, model)
            scale = step_s / REFERENCE_STEP_S
            print(f"calibration: {calibration}", flush=True)
        classes = scaled_classes(scale)
        config = ClientConfig(server.url, model, timeout_s=300.0, show_progress=False)
        prompts = PromptFactory(tokenizer_counter(str(default_model_path())))
        run_benchmark(_workload(args, classes, args.rates[0], WARM_UP_S), classes, config, prompts)
        runs = []
        for rate in args.rates:
            runs.append(live_rate(args, server.url, config, prompts, classes, profile, rate))
            shown = {k: runs[-1][k] for k in ("plan_factor", "step_spread", "load_average")}
            print(f"rate {rate:g}: " + json.dumps(shown), flush=True)
    return scale, classes, runs


def live_rate(
    args: argparse.Namespace,
    url: str,
    config: ClientConfig,
    prompts: PromptFactory,
    classes: SLOClasses,
    profile: Path,
    rate: float,
) -> dict[str, Any]:
    """One rate live: the workload to a file and back (what the twins replay too), the run,
    the instances' step spread, planning factor and refitted model over it."""
    stem = args.out_dir / f"rate-{rate:g}"
    save_workload(_workload(args, classes, rate, args.duration_s), f"{stem}.workload.jsonl")
    workload = load_workload(f"{stem}.workload.jsonl")
    before = instance_rows(url)
    with StepSampler(url) as sampler:
        live_run = run_benchmark(workload, classes, config, prompts)
    after = instance_rows(url)
    moments = moments_by_instance(before), moments_by_instance(after)
    spreads = {kind: step_spread(*moments, kind=kind) for kind in ("prefill", "decode")}
    spreads["pooled"] = step_spread(*moments)
    refit, refit_cv = fit_window(before, after)
    write_refit(profile, refit, f"{stem}.refit.json")
    write_rows([request_row(r) for r in live_run.results], f"{stem}.live.jsonl")
    return {
        "refit": {"coefficients": list(refit.coefficients), "cv": refit_cv},
        "rate_rps": rate,
        "stem": str(stem),
        "num_requests": len(workload),
        "num_kv_blocks": min(int(row["num_blocks"]) for row in after if row.get("num_blocks")),
        "plan_factor": sampler.mean(),
        "step_spread": {k: dataclasses.asdict(v) for k, v in spreads.items()},
        "load_average": os.getloadavg(),
    }


def twin_point(
    args: argparse.Namespace,
    run: dict[str, Any],
    profile: Path,
    classes: SLOClasses,
    mode: str,
    latency_s: float,
) -> PointComparison:
    """The simulated twin of one live rate, compared with it."""
    stem, spreads = run["stem"], {k: StepSpread(**v) for k, v in run["step_spread"].items()}
    kinds = (spreads["prefill"], spreads["decode"]) if mode == "per-kind" else ()
    noise = twin_noise(run["plan_factor"], spreads["pooled"], *kinds)
    truth = None
    if mode == "refit":  # the refitted model as it is, with its own spread
        noise, truth = TwinNoise(run["refit"]["cv"], 0.0), f"{stem}.refit.json"
    planned = scaled_profile(profile, run["plan_factor"], f"{stem}.profile.json")
    setup = twin_setup(planned, run["num_kv_blocks"], noise, args.seed, latency_s)
    setup = dataclasses.replace(setup, charge_profile_path=truth)
    _, sim_rows = simulate_with_records(setup, classes, load_workload(f"{stem}.workload.jsonl"))
    name = mode + ("+latency" if latency_s else "")
    write_rows(sim_rows, f"{stem}.sim-{name}.jsonl")
    live = _summary(read_rows(f"{stem}.live.jsonl"))
    return compare_point(run["rate_rps"], live, _summary(sim_rows))


def _response_latency(
    args: argparse.Namespace, run: dict[str, Any], profile: Path, classes: SLOClasses
) -> float:
    """`--response-latency-ms`, or what the lightest rate shows: the median of live minus
    simulated TTFT over its requests, for the `LATENCY_BASE` twin without it."""
    if args.response_latency_ms is not None:
        return float(args.response_latency_ms) / 1e3
    twin_point(args, run, profile, classes, LATENCY_BASE, 0.0)
    stem = run["stem"]
    return response_latency(
        read_rows(f"{stem}.live.jsonl"), read_rows(f"{stem}.sim-{LATENCY_BASE}.jsonl")
    )


def twin_setup(
    profile: Path, num_kv_blocks: int, noise: TwinNoise, seed: int, latency_s: float
) -> SimSetup:
    """The live deployment in the simulator: two instances, hyperflexis, their KV blocks."""
    return SimSetup(
        deployment=Deployment(num_mixed=NUM_INSTANCES),
        policy="hyperflexis",
        dispatch="hyperflexis",
        profile_path=str(profile),
        num_kv_blocks=num_kv_blocks,
        step_noise_cv=noise.cv,
        profile_error=noise.bias,
        decode_step_noise_cv=noise.decode_cv,
        decode_profile_error=noise.decode_bias,
        noise_seed=seed,
        response_latency_s=latency_s,
    )


def _classes(doc: dict[str, list[float]]) -> SLOClasses:
    """The classes a results file lists (name -> [TTFT s, TPOT s]), priorities as the defaults'."""
    defaults = {c.name: c for c in DEFAULT_CLASSES}
    return SLOClasses(
        tuple(
            SLOClass(name, ttft, tpot, defaults[name].priority, defaults[name].late)
            for name, (ttft, tpot) in doc.items()
        )
    )


def _summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """`hyperflexis report`'s recomputation of a run from its rows alone."""
    duration_s = duration_from_rows(rows)
    return recompute(records_from_rows(rows), duration_s, NUM_INSTANCES * duration_s)


def fit_profile(out: Path) -> Path:
    """The server's profile, fitted as `serve` fits a missing one (`profile --quick`)."""
    command = [sys.executable, "-m", "hyperflexis", "profile", "--quick", "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"profiling failed:\n{done.stderr[-2000:]}")
    print(done.stdout.strip(), flush=True)
    return out


def _workload(
    args: argparse.Namespace, classes: SLOClasses, rate: float, duration_s: float
) -> Workload:
    return build_workload(
        seed=args.seed,
        slo_mix=parse_slo_mix(args.slo_mix, classes),
        trace=args.trace,
        num_requests=max(round(rate * duration_s), 1),
        rate_rps=rate,
        length_scale=args.length_scale,
        max_prompt_len=args.max_prompt_len,
        max_output_len=args.max_output_len,
    )


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    parser.add_argument(
        "--rates",
        type=lambda s: [float(x) for x in s.split(",")],
        default=[1, 2, 4, 6, 8],
        help="requests/s (the knee, calibrated classes: ~5 at load average 10-16 on 2 cores, "
        "40-48 on a quiet machine: docs/results.md)",
    )
    parser.add_argument("--duration-s", type=float, default=60.0, help="seconds of arrivals")
    add_workload_args(parser)
    parser.add_argument(
        "--class-scale",
        type=float,
        default=None,
        help="the default classes x this (serve_slo.py's quiet-machine calibration gave 0.63); "
        "default: calibrate as serve_slo.py does, so the knee follows the machine's load",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="the server's profile (default: fit one)"
    )
    parser.add_argument("--seed", type=int, default=EVALUATION_SEEDS[0], help="workload seed")
    parser.add_argument("--out-dir", type=Path, default=Path("/tmp/hf-fidelity"))
    parser.add_argument(
        "--response-latency-ms",
        type=float,
        default=None,
        help="the twins' response path latency (default: measured at the lightest rate)",
    )
    parser.add_argument(
        "--twins-only",
        action="store_true",
        help="no live run: the twins of the live runs already in --out-dir (its fidelity.json)",
    )
    args = parser.parse_args()
    if len(set(args.rates)) != len(args.rates) or min(args.rates) <= 0:
        parser.error(f"--rates must be distinct and > 0, got {args.rates}")
    return args


if __name__ == "__main__":
    sys.exit(main())
