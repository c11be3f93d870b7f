"""`hyperflexis simulate`: a cluster on a virtual clock, with the real schedulers and dispatcher
and a latency model (DESIGN.md §1), reporting SLO attainment, latency, goodput and cost.

One run writes a results JSON. `--policies a,b --sweep-rates r1,r2` runs every (policy, rate)
pair instead, each policy with its natural dispatcher unless `--dispatch` names one
(hyperflexis -> hyperflexis, distserve -> distserve, the others -> round-robin), prints a
table, plots attainment against rate, and reports each policy's goodput at 90% attainment.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from hyperflexis.bench.metrics import goodput_at
from hyperflexis.commands import simulate_scaler
from hyperflexis.commands.simulate_report import (
    one_line,
    progress,
    sweep_table,
    write_json,
    write_records,
)

HELP = "Simulate a cluster on a virtual clock and report SLO attainment."

DEFAULT_SLO_MIX = "interactive:3,standard:5,batch:2"
# Synthetic lengths near the Azure conversation trace's (mean prompt 1155, mean output 211).
DEFAULT_PROMPT_LENS = "lognormal:mean=1150,sigma=0.8,max_len=8192"
DEFAULT_OUTPUT_LENS = "lognormal:mean=210,sigma=0.8,max_len=2048"
GOODPUT_TARGET = 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hyperflexis.commands.scheduler_flags import add_scheduler_arguments

    cluster = parser.add_argument_group("cluster")
    cluster.add_argument("--hardware", default="h100", help="accelerator (default: h100)")
    cluster.add_argument("--model", default="llama-3.1-8b", help="model (default: llama-3.1-8b)")
    cluster.add_argument(
        "--instances", type=int, default=None, help="collocated instances (default: 4)"
    )
    cluster.add_argument("--prefill", type=int, default=None, help="P/D: prefill instances")
    cluster.add_argument("--decode", type=int, default=None, help="P/D: decode instances")
    cluster.add_argument(
        "--links",
        default="all",
        help="P/D link policy: all, balanced (fan-out 2) or pairs (default: all)",
    )
    cluster.add_argument(
        "--policy", default="hyperflexis", help="instance scheduling policy (default: hyperflexis)"
    )
    cluster.add_argument(
        "--dispatch",
        default=None,
        help="dispatcher (default: the policy's natural one: hyperflexis -> hyperflexis, "
        "distserve -> distserve, others -> round-robin)",
    )
    cluster.add_argument(
        "--profile", default=None, help="profiled latency model JSON (default: analytic roofline)"
    )
    cluster.add_argument(
        "--step-noise",
        type=float,
        default=0.0,
        metavar="CV",
        help="charge each step its predicted time x seeded lognormal noise of this coefficient "
        "of variation (seed: --seed); schedulers still plan with the prediction (default: 0)",
    )
    cluster.add_argument(
        "--profile-error",
        type=float,
        default=0.0,
        metavar="BIAS",
        help="charge each step (1 + BIAS) x its predicted time: a latency model off by a fixed "
        "factor (default: 0)",
    )
    cluster.add_argument(
        "--no-fast-forward",
        action="store_true",
        help="simulate every decode step one by one (slower; same results)",
    )
    add_scheduler_arguments(parser)
    load = parser.add_argument_group("workload")
    load.add_argument("--trace", default=None, help="Azure LLM trace CSV")
    load.add_argument("--rate", type=float, default=None, help="requests/s (a trace is rescaled)")
    load.add_argument("--arrival", default="poisson", help="synthetic arrivals: poisson, gamma")
    load.add_argument("--burstiness", type=float, default=None, help="gamma shape (1: Poisson)")
    load.add_argument("--num-requests", type=int, default=None, help="requests (a trace: first N)")
    load.add_argument("--prompt-lens", default=DEFAULT_PROMPT_LENS, help="synthetic prompt lengths")
    load.add_argument("--output-lens", default=DEFAULT_OUTPUT_LENS, help="synthetic output lengths")
    load.add_argument("--slo-mix", default=DEFAULT_SLO_MIX, help=f"(default: {DEFAULT_SLO_MIX})")
    load.add_argument("--slo-classes", default=None, help="SLO classes file (TOML/YAML/JSON)")
    load.add_argument("--seed", type=int, default=0, help="workload seed (default: 0)")
    load.add_argument(
        "--duration",
        type=float,
        default=None,
        help="steady state: every rate offers SECONDS of arrivals (ceil(rate x SECONDS) + 1 "
        "requests; a trace, or its first --num-requests rows, is extended and then looped)",
    )
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--policies", default=None, help="comma-separated policies to compare")
    sweep.add_argument("--sweep-rates", default=None, help="comma-separated rates (requests/s)")
    sweep.add_argument("--plot", default=None, help="sweep plot PNG (default: next to --out)")
    parser.add_argument("--out", required=True, help="results JSON to write")
    parser.add_argument(
        "--no-records",
        action="store_true",
        help="write no per-request records (default: OUT.requests.jsonl, or one per sweep run "
        "under OUT.requests/, for `hyperflexis report`)",
    )
    simulate_scaler.add_arguments(parser)  # --scaler and its options


def run(args: argparse.Namespace) -> int:
    from hyperflexis.core.slo import SLOClasses
    from hyperflexis.workloads import parse_slo_mix

    setup = _setup(args)
    classes = SLOClasses.from_file(args.slo_classes) if args.slo_classes else SLOClasses()
    mix = parse_slo_mix(args.slo_mix, classes)
    workloads = _WorkloadMaker(args, mix)
    simulate_scaler.check_arguments(args)
    if args.scaler is not None:  # an elastic run (commands/simulate_scaler.py)
        return simulate_scaler.run(args, setup, classes, workloads)
    out = Path(args.out)
    records = None if args.no_records else out
    if args.policies is None and args.sweep_rates is None:
        doc = _single_run(setup, classes, workloads, args.rate, records)
        write_json(out, doc)
        print(one_line(doc))
    else:
        policies = _names(args.policies) if args.policies else [setup.policy]
        rates = _rates(args.sweep_rates, "--sweep-rates") if args.sweep_rates else None
        if rates is None:
            if args.rate is None:
                raise ValueError("a sweep needs --sweep-rates (or --rate)")
            rates = [_positive(args.rate, "--rate")]
        plot = Path(args.plot) if args.plot else out.with_suffix(".png")
        doc = _sweep(setup, classes, workloads, policies, rates, args.dispatch, plot, records)
        write_json(out, doc)
        print(f"wrote {plot}")
    print(f"wrote {out}")
    return 0


# -- setup ------------------------------------------------------------------------------------


def _setup(args: argparse.Namespace) -> Any:
    from hyperflexis.cluster import LinkTable, dispatcher_names
    from hyperflexis.commands.scheduler_flags import scheduler_config
    from hyperflexis.perf import hardware_spec, model_spec
    from hyperflexis.scheduler import policy_class
    from hyperflexis.sim import Deployment, SimSetup

    hardware_spec(args.hardware)
    model_spec(args.model)
    policy_class(args.policy)
    if args.policies:
        for name in _names(args.policies):
            policy_class(name)
    if args.dispatch is not None and args.dispatch not in dispatcher_names():
        known = ", ".join(dispatcher_names())
        raise ValueError(f"unknown dispatcher {args.dispatch!r}; known: {known}")
    scheduler = scheduler_config(args)
    if args.prefill is not None or args.decode is not None:
        if args.prefill is None or args.decode is None:
            raise ValueError("a P/D deployment needs both --prefill and --decode")
        if args.prefill < 1 or args.decode < 1:
            raise ValueError(
                f"invalid P/D counts --prefill {args.prefill} --decode {args.decode}: "
                "each must be >= 1"
            )
        if args.instances is not None and args.instances != args.prefill + args.decode:
            raise ValueError(
                f"--instances {args.instances} does not match --prefill {args.prefill} + "
                f"--decode {args.decode}"
            )
        prefill_ids = [f"prefill-{i}" for i in range(args.prefill)]
        decode_ids = [f"decode-{i}" for i in range(args.decode)]
        links = LinkTable.build(prefill_ids, decode_ids, policy=args.links).links()
        deployment = Deployment(num_prefill=args.prefill, num_decode=args.decode, links=links)
    else:
        instances = 4 if args.instances is None else args.instances
        if instances < 1:
            raise ValueError(f"invalid --instances {instances}: must be >= 1")
        deployment = Deployment(num_mixed=instances)
    return SimSetup(
        hardware=args.hardware,
        model=args.model,
        deployment=deployment,
        policy=args.policy,
        dispatch=args.dispatch,
        profile_path=args.profile,
        scheduler=scheduler,
        fast_forward=not args.no_fast_forward,
        step_noise_cv=args.step_noise,
        profile_error=args.profile_error,
        noise_seed=args.seed,
    )


class _WorkloadMaker:
    """Builds the seeded workload at a given rate (reading a trace once)."""

    def __init__(self, args: argparse.Namespace, mix: Any) -> None:
        from hyperflexis.workloads import make_arrival, parse_lengths, read_azure_trace

        self.mix = mix
        self.seed = args.seed
        self.num_requests = args.num_requests
        self.duration_s = args.duration
        if self.num_requests is not None and self.num_requests < 1:
            raise ValueError(f"invalid --num-requests {self.num_requests}: must be >= 1")
        if self.duration_s is not None:
            _positive(self.duration_s, "--duration")
        if args.rate is not None:
            _positive(args.rate, "--rate")
        self.trace = None
        if args.trace is not None:
            self.trace = read_azure_trace(args.trace, max_requests=args.num_requests)
            if self.trace.num_requests == 0:
                raise ValueError(f"trace {args.trace} has no requests")
            return
        if self.duration_s is not None and self.num_requests is not None:
            raise ValueError("synthetic arrivals take --num-requests or --duration, not both")
        if self.num_requests is None and self.duration_s is None:
            raise ValueError("give --trace FILE, or --num-requests N with synthetic arrivals")
        params: dict[str, float] = {"rate_rps": 1.0}  # replaced by the run's rate
        if args.burstiness is not None:
            params["burstiness"] = args.burstiness
        self.arrival = make_arrival(args.arrival, **params)
        self.prompt_lens = parse_lengths(args.prompt_lens)
        self.output_lens = parse_lengths(args.output_lens)

    def make(self, rate_rps: float | None) -> Any:
        from hyperflexis.workloads import build_workload, steady_workload

        source: dict[str, Any] = {"trace": self.trace}
        if self.trace is None:
            if rate_rps is None:
                raise ValueError("synthetic arrivals need --rate (or --sweep-rates)")
            source = {
                "arrival": self.arrival,
                "prompt_lens": self.prompt_lens,
                "output_lens": self.output_lens,
            }
        if self.duration_s is None:
            if self.trace is None:
                source["num_requests"] = self.num_requests
            return build_workload(seed=self.seed, slo_mix=self.mix, rate_rps=rate_rps, **source)
        if rate_rps is None:
            raise ValueError("--duration needs --rate (or --sweep-rates)")
        return steady_workload(
            seed=self.seed,
            slo_mix=self.mix,
            rate_rps=rate_rps,
            duration_s=self.duration_s,
            **source,
        )


# -- runs -------------------------------------------------------------------------------------


def _single_run(
    setup: Any, classes: Any, workloads: _WorkloadMaker, rate: float | None, out: Path | None
) -> Any:
    from hyperflexis.sim import simulate_with_records

    workload = workloads.make(rate)
    with progress(len(workload), "simulating") as on_progress:
        doc, rows = simulate_with_records(setup, classes, workload, on_progress)
    if out is not None:
        doc["records"] = write_records(out, out.with_suffix(".requests.jsonl"), rows)
    doc["rate_rps"] = rate
    doc["seed"] = workloads.seed
    doc["steady_duration_s"] = workloads.duration_s
    return doc


def _sweep(
    setup: Any,
    classes: Any,
    workloads: _WorkloadMaker,
    policies: list[str],
    rates: list[float],
    dispatch: str | None,
    plot: Path,
    out: Path | None,
) -> dict[str, Any]:
    from hyperflexis.bench.plots import plot_attainment_vs_rate
    from hyperflexis.sim import simulate_with_records
    from hyperflexis.sim.bound import steady_goodput_bound
    from hyperflexis.sim.setup import with_policy

    runs: list[dict[str, Any]] = []
    by_rate = {rate: workloads.make(rate) for rate in rates}
    with progress(len(policies) * len(rates), "runs") as on_progress:
        for policy in policies:
            for rate in rates:
                policy_setup = with_policy(setup, policy, dispatch)
                result, rows = simulate_with_records(policy_setup, classes, by_rate[rate])
                if out is not None:
                    path = out.with_suffix(".requests") / f"{policy}-{rate:g}.jsonl"
                    result["records"] = write_records(out, path, rows)
                runs.append({"policy": policy, "rate": rate, **result})
                on_progress(1)
    doc: dict[str, Any] = {"runs": runs, "steady_duration_s": workloads.duration_s}
    series: dict[str, list[tuple[float, float]]] = {}
    print(sweep_table(runs))
    for key, view in (("attainment", ""), ("attainment_per_token", "_per_token")):
        doc[f"goodput_at_90{view}"] = goodput = {}
        label = ", per-token" if view else ""
        for policy in policies:
            points = [(run["rate"], run[key]) for run in runs if run["policy"] == policy]
            series[policy + label] = points
            goodput[policy] = goodput_at(points, GOODPUT_TARGET)
            print(f"goodput@{GOODPUT_TARGET:.0%}{label} {policy}: {goodput[policy]:.3g} req/s")
    # The fluid bound on goodput@90 (sim/bound.py), beside every sweep; a short replay can pass
    # it (its backlog drains after the last arrival), a steady-state one cannot.
    bound = steady_goodput_bound(setup, classes, workloads.make, rates[-1])
    doc["goodput_bound_at_90"] = bound.echo()
    print(f"fluid bound on goodput@{GOODPUT_TARGET:.0%}: {bound.rate_rps:.3g} req/s")
    title = f"{setup.model} on {setup.hardware}, {_deployment_name(setup)}"
    plot_attainment_vs_rate(series, plot, title=title)
    return doc


def _deployment_name(setup: Any) -> str:
    d = setup.deployment
    if d.is_disaggregated:
        return f"{d.num_prefill}P+{d.num_decode}D"
    return f"{d.num_mixed} instances"


# -- small parsers ----------------------------------------------------------------------------


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ValueError(f"invalid list {text!r}: expected comma-separated names")
    if len(set(names)) != len(names):
        raise ValueError(f"invalid list {text!r}: a name appears twice")
    return names


def _rates(text: str, option: str) -> list[float]:
    rates = []
    for item in text.split(","):
        try:
            value = float(item)
        except ValueError:
            raise ValueError(f"invalid {option} {text!r}: {item!r} is not a number") from None
        rates.append(_positive(value, option))
    if len(set(rates)) != len(rates):
        raise ValueError(f"invalid {option} {text!r}: a rate appears twice")
    return sorted(rates)


def _positive(value: float, option: str) -> float:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"invalid {option} {value}: must be a finite number > 0")
    return value
