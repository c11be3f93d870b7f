"""Live elasticity (issue 15): `hyperflexis serve --scaler` under a load that rises and falls,
the `hyperflexis` scaler against `threshold` and against `static` sized to the fewest instances
that hold the peak, and the elastic simulator's prediction of the same runs.

Collocated (`--deployment collocated`, the default): the built-in tiny model, `--threads 1` per
instance, scaled between 1 and 2 instances (this machine has two cores: live capacity stops
growing at two). The load: Poisson arrivals whose rate rises from `--low-rate` to `--peak-rate`
and falls back over `--minutes` (a sin^2 cycle in `--phase-s` steps), lengths like the Azure
conversation trace at x0.125 (prompts ~140 tokens, outputs ~33). P/D (`--deployment pd`): 2
prefill + 1 decode instance (`--prefill 2 --decode 1`), each pool between 1 and 2, at a constant
rate whose mix switches four times between prompt-heavy and decode-heavy (`PD_PHASES`), so
2P+1D <-> 1P+2D role flips are the scaler's natural move: long prompts with short outputs
(standard and batch: documents in, summaries out) in turn with short prompts and long outputs
(interactive: chat). Each kind has its own classes because the scaler expects each arrival's
output from its class's recent finishes: under one shared mix that estimate lags the shift by
its window, so the prefill pool shrinks before the decode pool shows short and no flip comes.
(The server bounds each pool, not the total: 2P+2D stays possible.)

Each policy gets its own server, one after the other, and the same requests (`hyperflexis
bench`'s client); the server's instance-seconds, scaling events, role flips and migrations over
the run come from its `/metrics` and `/debug/scaling` (`bench.server_info`). `static`'s size
comes from a probe: `--probe-s` seconds at the peak rate on one instance; below 99% attainment
static runs the maximum. Then the elastic simulator runs the same workload with the server's step
profile (the one `serve` profiled the engine into at start, `engine.step_profiler`'s cache), the
same scaler, bounds and control interval, and what that policy's live run measured
(`measured`): its schedulers plan with the profile x the live instances' mean correction factor
over the run (what theirs planned with), each step takes the latency model refitted on the
live instances' own steps (`bench.fidelity.fit_window` on `/debug/instances` read through the
run, `bench.live_steps`) with its residual spread as noise, each instance has the live KV block
count, and new instances and role flips take the start-up and switch times the live runs'
events show (pooled over the policies). Beside it, the older twin (`uniform`: plans with the
raw profile, every step slowed by the final correction factor) and the raw profile's (`raw`).
Targets: hyperflexis within 1 point of static's attainment; live instance-seconds and attainment
within 10% and 2 points of the `measured` prediction. `--predict-only FILE` redoes the
predictions of a results file (its live rows and command) without a live run.

    .venv/bin/python benchmarks/serve_scaling.py [--minutes 10] [--deployment collocated|pd]
        [--low-rate 4] [--peak-rate 28] [--class-scale 1.0] [--control-interval 5]
        [--policies hyperflexis,threshold,static] [--static N] [--out results.json]
        [--predict-only results.json]
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hyperflexis.bench.client import ClientConfig, RequestResult, run_benchmark
from hyperflexis.bench.live_steps import StepSampler
from hyperflexis.bench.report import bench_summary
from hyperflexis.bench.scaling_twin import TwinSetup, measured_row, pooled_times, predict
from hyperflexis.bench.server_info import (
    ServerCost,
    correction_factor,
    cost_between,
    served_model_id,
    server_cost,
)
from hyperflexis.bench.server_process import ServerProcess, exit_on_sigterm
from hyperflexis.core.slo import SLOClasses
from hyperflexis.engine.default_model import default_model_path
from hyperflexis.engine.step_profiler import default_profile_path
from hyperflexis.sim import Deployment
from hyperflexis.workloads import (
    Workload,
    build_workload,
    concat_phases,
    make_lengths,
    parse_slo_mix,
    poisson,
)
from serve_slo import scaled_classes  # this folder's

SLO_MIX = "interactive:3,standard:5,batch:2"
SCALERS = ("hyperflexis", "threshold")
MAX_INSTANCES = 2  # per pool: two cores
MAX_FAILURES = 50  # failed requests kept in the results, each with its times and error
# (fraction of the run, mean prompt tokens, mean output tokens[, SLO mix; default `SLO_MIX`])
Phases = Sequence[Sequence[Any]]
# P/D: prompt-heavy and decode-heavy in turn; at 10 req/s each needs about two instances of its
# own pool and one of the other (2P+1D <-> 1P+2D). Lengths clipped at `PD_MAX_LENS`.
_DOCS, _CHAT = (0.25, 700, 8, "standard:5,batch:2"), (0.25, 40, 220, "interactive:1")
PD_PHASES: Phases = (_DOCS, _CHAT, _DOCS, _CHAT)
PD_MAX_LENS = (2000, 512)  # prompt, output
# What results files without `pd_phases` ran: prompt-heavy, mixed, decode-heavy, one mix.
PD_PHASES_BEFORE: Phases = ((0.4, 400, 8), (0.2, 150, 40), (0.4, 40, 120))
MAX_LENS = (512, 128)  # collocated, and P/D before `PD_PHASES`


def main() -> int:
    args = _parse_args(sys.argv[1:])
    if args.predict_only is not None:
        return predict_only(args.predict_only, args.out)
    exit_on_sigterm()
    started = time.perf_counter()
    classes = scaled_classes(args.class_scale)
    workload = make_load(args, PD_PHASES, PD_MAX_LENS)
    print(f"{len(workload)} requests over {workload[-1].arrival_s:.0f} s", flush=True)
    static = args.static or probe_static(args, classes)
    live: dict[str, dict[str, Any]] = {}
    for policy in args.policies:
        live[policy] = live_run(args, policy, static, workload, classes)
        print(f"{policy}: {_line(live[policy])}", flush=True)
    profile = default_profile_path(default_model_path(), "cpu", "float32")
    doc = {
        "command": " ".join(sys.argv),
        "profile": json.loads(profile.read_text()),  # the one the servers planned with
        "deployment": args.deployment,
        "minutes": args.minutes,
        "pd_phases": PD_PHASES,
        "pd_max_lens": PD_MAX_LENS,
        "num_requests": len(workload),
        "static_size": static,
        "classes": {c.name: [c.ttft_s, c.tpot_s] for c in classes.values()},
        "live": live,
        "live_wall_s": time.perf_counter() - started,
    }
    if args.out is not None:  # the live half first: `--predict-only` redoes the rest
        args.out.write_text(json.dumps(doc, indent=1) + "\n")
    return _predict_and_write(args, doc, profile, args.out)


def predict_only(path: Path, out: Path | None) -> int:
    """The predictions of a results file redone from its live rows and its command's load."""
    doc = json.loads(path.read_text())
    args = _parse_args(shlex.split(doc["command"])[1:])
    with tempfile.TemporaryDirectory() as tmp:
        profile = default_profile_path(default_model_path(), "cpu", "float32")
        if "profile" in doc:
            profile = Path(tmp) / "profile.json"
            profile.write_text(json.dumps(doc["profile"]))
        else:
            print(f"{path} keeps no profile: predicting with today's {profile}", flush=True)
        return _predict_and_write(args, {**doc, "predicted_from": str(path)}, profile, out)


def _predict_and_write(
    args: argparse.Namespace, doc: dict[str, Any], profile: Path, out: Path | None
) -> int:
    """The simulator's predictions of `doc`'s live runs, the targets, the table, the file."""
    started = time.perf_counter()
    lens = doc.get("pd_max_lens", MAX_LENS)
    workload = make_load(args, doc.get("pd_phases", PD_PHASES_BEFORE), tuple(lens))
    classes, live = scaled_classes(args.class_scale), doc["live"]
    sim = predict_all(args, doc["static_size"], workload, classes, live, profile)
    result = {**doc, "sim": sim, "targets": targets(live, sim)}
    result["sim_wall_s"] = time.perf_counter() - started
    _print(result)
    if out is not None:
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


def make_load(
    args: argparse.Namespace,
    pd_phases: Phases,
    pd_max_lens: tuple[int, int],
    minutes: float | None = None,
) -> Workload:
    """Collocated: the rise and fall; P/D: the shifting mix (module docstring)."""
    duration_s = (args.minutes if minutes is None else minutes) * 60
    if args.deployment == "pd":
        lens = pd_max_lens
        shape = [(p[0] * duration_s, args.peak_rate, *p[1:]) for p in pd_phases]
    else:
        lens = MAX_LENS
        n = max(round(duration_s / args.phase_s), 1)
        swing = args.peak_rate - args.low_rate
        rates = [args.low_rate + swing * math.sin(math.pi * (k + 0.5) / n) ** 2 for k in range(n)]
        shape = [(duration_s / n, rate, 140, 33) for rate in rates]
    phases = []
    for k, (length_s, rate, prompt, output, *mix) in enumerate(shape):
        phase = build_workload(
            seed=args.seed * 1000 + k,
            slo_mix=parse_slo_mix(mix[0] if mix else SLO_MIX, SLOClasses()),
            arrival=poisson(rate),
            prompt_lens=make_lengths("lognormal", mean=prompt, sigma=0.8, max_len=lens[0]),
            output_lens=make_lengths("lognormal", mean=output, sigma=0.8, max_len=lens[1]),
            num_requests=math.ceil(rate * length_s * 1.3) + 5,
            id_prefix=f"p{k}-",
        )
        phases.append((phase, length_s))
    return concat_phases(phases)


def probe_static(args: argparse.Namespace, classes: SLOClasses) -> int:
    """The fewest instances (per pool) that hold the peak: one, if it attains >= 99% over
    `--probe-s` seconds at the peak rate, else the maximum."""
    if args.deployment == "pd":
        return MAX_INSTANCES  # a static P/D cluster must hold both ends of the shift
    probe = argparse.Namespace(
        **{**vars(args), "low_rate": args.peak_rate, "phase_s": args.probe_s}
    )
    workload = make_load(probe, PD_PHASES, PD_MAX_LENS, minutes=args.probe_s / 60)
    with ServerProcess(_server_args(args, "static", 1), ready_timeout_s=600) as server:
        run = run_benchmark(workload, classes, _config(server.url))
    attainment = bench_summary(run)["attainment"]
    print(f"probe: 1 instance at {args.peak_rate:g} req/s attains {attainment:.1%}", flush=True)
    return 1 if attainment >= 0.99 else MAX_INSTANCES


def _server_args(args: argparse.Namespace, policy: str, static: int) -> list[str]:
    """Static: `static` instances per pool, fixed; a scaler: the smallest start (1; P/D 2P+1D,
    to flip from), each pool between 1 and the maximum."""
    common = ["--threads", "1", "--control-interval", str(args.control_interval)]
    if args.deployment == "pd":
        sizes = (static, static) if policy == "static" else (2, 1)
        common += ["--prefill", str(sizes[0]), "--decode", str(sizes[1])]
    else:
        common += ["--instances", str(static if policy == "static" else 1)]
    if policy == "static":
        return common
    return [*common, "--scaler", policy, "--min-instances", "1", "--max-instances", "2"]


def live_run(
    args: argparse.Namespace, policy: str, static: int, workload: Workload, classes: SLOClasses
) -> dict[str, Any]:
    """One server under the whole load: attainment, the server's cost and scaling events, and
    what its instances measured for the twin (`bench.scaling_twin.measured_row`)."""
    marks: list[tuple[float, ServerCost | None]] = []
    with ServerProcess(
        _server_args(args, policy, static), ready_timeout_s=600, echo=args.echo_server
    ) as server:

        def at_start() -> None:
            marks.append((time.monotonic(), server_cost(server.url)))

        with StepSampler(server.url) as sampler:
            run = run_benchmark(workload, classes, _config(server.url), at_start=at_start)
        after = server_cost(server.url)
        factor = correction_factor(server.url)
    start_s, before = marks[0]
    if before is None or after is None:
        raise RuntimeError(f"{policy}: the server reported no cost")
    cost = cost_between(before, after)
    summary = bench_summary(run, cost["instance_seconds"])
    events = [{**e, "time_s": round(e["time_s"] - start_s, 2)} for e in cost.pop("events")]
    return {
        "server_args": _server_args(args, policy, static),
        "attainment": summary["attainment"],
        "attainment_by_class": summary["attainment_by_class"],
        "num_rejected": summary["num_rejected"],
        "num_failed": summary["num_failed"],
        "duration_s": summary["duration_s"],
        "ttft_p50_s": summary["ttft_s"]["p50"],
        "tpot_p50_s": summary["tpot_s"]["p50"],
        "correction_factor": factor,
        "errors": dict(Counter(r.error[:120] for r in run.results if r.error)),
        "failures": [_failure(r) for r in run.results if r.record.status == "failed"][
            :MAX_FAILURES
        ],
        **cost,
        **measured_row(sampler, events),
        "events": events,
    }


def _failure(result: RequestResult) -> dict[str, Any]:
    """One failed request, enough to find it in the server's log."""
    record = result.record
    return {
        "request_id": record.request_id,
        "sent_s": round(record.arrival_s, 3),
        "finish_s": round(record.finish_s, 3) if record.finish_s is not None else None,
        "instance": record.instance,
        "prompt_tokens": result.prompt_tokens,
        "output_len": result.spec.output_len,
        "http_status": result.http_status,
        "error": result.error[:300],
    }


def predict_all(
    args: argparse.Namespace,
    static: int,
    workload: Workload,
    classes: SLOClasses,
    live: dict[str, dict[str, Any]],
    profile: Path,
) -> dict[str, dict[str, Any]]:
    """The twin of every live run (`bench.scaling_twin`) on the servers' `profile`, with the
    transition times pooled over all of them."""
    times = pooled_times(live.values())
    out = {}
    for policy, row in live.items():
        size = static if policy == "static" else 1
        start = Deployment(num_mixed=size)
        if args.deployment == "pd":
            start = Deployment(num_prefill=size if policy == "static" else 2, num_decode=size)
        twin = TwinSetup(profile, start, policy, MAX_INSTANCES, args.control_interval, args.seed)
        out[policy] = predict(twin, row, times, classes, workload)
    return out


def targets(live: dict[str, dict[str, Any]], sim: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, each with its figures and whether it is met."""
    out: dict[str, Any] = {}
    if "hyperflexis" in live and "static" in live:
        gap = live["hyperflexis"]["attainment"] - live["static"]["attainment"]
        out["hyperflexis_vs_static_points"] = {"value": gap * 100, "met": gap >= -0.01}
    for policy, row in live.items():
        predicted = sim[policy]["measured"]
        if "error" in predicted:
            out[f"{policy}_vs_sim"] = {"error": predicted["error"], "met": False}
            continue
        ratio = row["instance_seconds"] / max(predicted["instance_seconds"], 1e-9)
        points = (row["attainment"] - predicted["attainment"]) * 100
        out[f"{policy}_vs_sim"] = {
            "instance_seconds_ratio": ratio,
            "attainment_points": points,
            "met": abs(ratio - 1) <= 0.10 and abs(points) <= 2,
        }
    return out


def _line(row: dict[str, Any]) -> str:
    return (
        f"attainment {row['attainment']:.1%}, {row['instance_seconds']:.0f} instance-seconds, "
        f"events {row['scaling_events']}, role flips {row['num_role_flips']}, "
        f"migrations {row['num_migrations']}, correction {row['correction_factor']}"
    )


def _print(result: dict[str, Any]) -> None:
    print(
        "\n| policy | attainment | instance-s | scale-outs | role flips | flip time (s) | "
        "migrations | sim measured: attainment / inst-s | sim uniform | sim raw |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for policy, row in result["live"].items():
        sims = [result["sim"][policy][k] for k in ("measured", "uniform", "raw")]
        flips = row["flip_s"]
        flip_s = f"{sum(flips) / len(flips):.1f}" if flips else "-"
        cells = [
            "error" if "error" in s else f"{s['attainment']:.1%} / {s['instance_seconds']:.0f}"
            for s in sims
        ]
        print(
            f"| {policy} | {row['attainment']:.1%} | {row['instance_seconds']:.0f} | "
            f"{row['scaling_events'].get('scale_out', 0)} | {row['num_role_flips']} | {flip_s} "
            f"| {row['num_migrations']} | " + " | ".join(cells) + " |"
        )
    policy = next(iter(result["sim"]))
    print(f"\nmeasured times: {result['sim'][policy]['measured_times']}")
    print(f"static size: {result['static_size']}; targets: {json.dumps(result['targets'])}")
    print(f"wall time: live {result.get('live_wall_s', 0):.0f} s, sim {result['sim_wall_s']:.0f} s")


def _config(url: str) -> ClientConfig:
    return ClientConfig(
        base_url=url, model=served_model_id(url), timeout_s=300.0, show_progress=False
    )


def _parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    parser.add_argument("--deployment", choices=["collocated", "pd"], default="collocated")
    parser.add_argument("--low-rate", type=float, default=4.0, help="req/s at the ends")
    parser.add_argument("--peak-rate", type=float, default=28.0, help="req/s at the peak")
    parser.add_argument("--phase-s", type=float, default=30.0, help="seconds per rate step")
    parser.add_argument("--class-scale", type=float, default=1.0, help="x the default classes")
    parser.add_argument("--control-interval", type=float, default=5.0, help="scaler seconds")
    parser.add_argument("--policies", default="hyperflexis,threshold,static")
    parser.add_argument("--static", type=int, default=None, help="static's size (no probe)")
    parser.add_argument("--probe-s", type=float, default=60.0, help="static-sizing probe")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="results JSON")
    parser.add_argument("--echo-server", action="store_true", help="server output to stderr")
    parser.add_argument(
        "--predict-only", type=Path, default=None, help="redo a results file's predictions"
    )
    args = parser.parse_args(argv)
    args.policies = [p for p in args.policies.split(",") if p]
    unknown = set(args.policies) - {*SCALERS, "static"}
    if unknown:
        parser.error(f"unknown policies {sorted(unknown)}")
    if not 0 < args.low_rate <= args.peak_rate:
        parser.error("need 0 < --low-rate <= --peak-rate")
    return args


if __name__ == "__main__":
    sys.exit(main())
