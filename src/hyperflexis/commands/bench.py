"""`hyperflexis bench`: open-loop multi-SLO load against any OpenAI-compatible server."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hyperflexis.core.slo import SLOClasses
    from hyperflexis.workloads import Workload

HELP = "Load-test an OpenAI-compatible server with multi-SLO traffic."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hyperflexis.workloads import arrival_names

    parser.add_argument("--base-url", required=True, help="server root, e.g. http://127.0.0.1:8000")
    parser.add_argument("--model", required=True, help="the `model` field sent with each request")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--trace", type=Path, help="Azure trace CSV (TIMESTAMP,ContextTokens,...)")
    source.add_argument(
        "--dataset", choices=["random"], help="synthetic requests of --input-len/--output-len"
    )
    parser.add_argument(
        "--input-len", default="256", help="prompt tokens: 128 or a spec like uniform:lo=64,hi=512"
    )
    parser.add_argument("--output-len", default="64", help="output tokens (same forms)")
    parser.add_argument(
        "--arrival", default="poisson", choices=arrival_names(), help="arrival process (--dataset)"
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=None,
        help="requests per second (with --trace: rescale its timestamps; default: as recorded)",
    )
    parser.add_argument(
        "--burstiness", type=float, default=1.0, help="gamma shape (1: Poisson, < 1: burstier)"
    )
    parser.add_argument(
        "--num-requests", type=int, default=None, help="requests to send (default 100; trace: all)"
    )
    parser.add_argument(
        "--slo-mix",
        default="interactive:3,standard:5,batch:2",
        help="class shares, e.g. interactive:3,standard:5,batch:2",
    )
    parser.add_argument(
        "--slo-classes", type=Path, default=None, help="SLO classes file (TOML, YAML or JSON)"
    )
    parser.add_argument("--length-scale", type=float, default=None, help="scale trace lengths")
    parser.add_argument("--max-input-len", type=int, default=None, help="clip prompt tokens")
    parser.add_argument("--max-output-len", type=int, default=None, help="clip output tokens")
    parser.add_argument("--out", type=Path, required=True, help="summary JSON to write")
    parser.add_argument("--jsonl", type=Path, default=None, help="per-request JSON lines file")
    parser.add_argument("--plot", type=Path, default=None, help="PNG of per-class CDFs")
    parser.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    parser.add_argument("--api-key", default=None, help="sent as Authorization: Bearer KEY")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument(
        "--max-concurrency", type=int, default=None, help="most requests in flight (default: none)"
    )
    parser.add_argument("--timeout-s", type=float, default=600.0, help="per-request limit")
    parser.add_argument(
        "--tokenizer",
        type=Path,
        default=None,
        help="model folder whose tokenizer sizes prompts exactly (else ~1 token per word)",
    )
    parser.add_argument(
        "--instances",
        type=int,
        default=None,
        help="instances behind the server: instance_seconds = instances x duration (default: "
        "what a HyperFlexis server counts, from its /metrics)",
    )
    parser.add_argument("--no-ignore-eos", action="store_true", help="do not send ignore_eos")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or table")


def run(args: argparse.Namespace) -> int:
    from hyperflexis.bench.client import ClientConfig, run_benchmark
    from hyperflexis.bench.prompts import PromptFactory, tokenizer_counter
    from hyperflexis.bench.report import bench_summary, class_table, write_jsonl
    from hyperflexis.bench.server_info import ServerCost, cost_between, server_cost
    from hyperflexis.core.slo import SLOClasses

    classes = SLOClasses.from_file(args.slo_classes) if args.slo_classes else SLOClasses()
    workload = build_bench_workload(args, classes)
    if args.instances is not None and args.instances < 1:
        raise ValueError(f"invalid --instances: expected >= 1, got {args.instances}")
    config = ClientConfig(
        base_url=args.base_url,
        model=args.model,
        endpoint=args.endpoint,
        api_key=args.api_key,
        max_concurrency=args.max_concurrency,
        timeout_s=args.timeout_s,
        ignore_eos=not args.no_ignore_eos,
        show_progress=not args.quiet,
    )
    counter = tokenizer_counter(str(args.tokenizer)) if args.tokenizer else None
    before: list[ServerCost | None] = []
    run_result = run_benchmark(
        workload,
        classes,
        config,
        PromptFactory(counter),
        at_start=lambda: before.append(server_cost(args.base_url, args.api_key)),
    )
    after = server_cost(args.base_url, args.api_key)
    cost = cost_between(before[0], after) if before and before[0] and after else None
    if args.instances is not None or cost is None:
        instance_seconds = (args.instances or 0) * run_result.duration_s
    else:  # what the server counted: instances that scaled, loading ones included
        instance_seconds = cost["instance_seconds"]
    summary = bench_summary(run_result, instance_seconds)
    summary["server_cost"] = cost
    summary.update(_run_info(args, len(workload)))
    if args.jsonl is not None:  # where `hyperflexis report` finds them
        summary["records"] = os.path.relpath(args.jsonl, args.out.parent)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=1) + "\n")
    if args.jsonl is not None:
        write_jsonl(run_result.results, args.jsonl)
    if args.plot is not None:
        from hyperflexis.bench.plots import plot_run

        plot_run(run_result.records, args.plot, title=f"{args.model} @ {args.base_url}")
    if summary["num_failed"] == summary["num_requests"]:
        first_error = next(r.error for r in run_result.results if r.error)
        print(f"hyperflexis bench: every request failed; the first: {first_error}", file=sys.stderr)
        return 1
    if not args.quiet:
        print(class_table(summary))
        print(
            f"attainment {summary['attainment']:.1%} (per-token deadlines "
            f"{summary['attainment_per_token']:.1%}), goodput {summary['goodput_rps']:.2f} req/s, "
            f"{summary['completed']}/{summary['num_requests']} completed, "
            f"{summary['num_rejected']} rejected, {summary['num_failed']} failed "
            f"in {summary['duration']:.1f} s -> {args.out}",
            file=sys.stderr,
        )
        if cost is not None:
            print(cost_line(cost), file=sys.stderr)
    return 0


def cost_line(cost: dict[str, Any]) -> str:
    """The server's cost over the run, one line (`bench.server_info.cost_between`'s dict)."""
    events = ", ".join(f"{kind} {n}" for kind, n in cost["scaling_events"].items()) or "none"
    return (
        f"server: {cost['instance_seconds']:.1f} instance-seconds, ${cost['cost_usd']:.4f}; "
        f"role flips {cost['num_role_flips']}, migrations {cost['num_migrations']}; "
        f"scaling events: {events}"
    )


def build_bench_workload(args: argparse.Namespace, classes: SLOClasses) -> Workload:
    """The workload the arguments describe (trace replay or synthetic)."""
    from hyperflexis.workloads import build_workload, make_arrival, parse_lengths, parse_slo_mix

    mix = parse_slo_mix(args.slo_mix, classes)
    if args.num_requests is not None and args.num_requests < 1:
        raise ValueError(f"invalid --num-requests: expected >= 1, got {args.num_requests}")
    if args.rate is not None and not args.rate > 0:
        raise ValueError(f"invalid --rate: expected > 0, got {args.rate}")
    fit = {
        "length_scale": args.length_scale,
        "max_prompt_len": args.max_input_len,
        "max_output_len": args.max_output_len,
    }
    if args.trace is not None:
        if not args.trace.is_file():
            raise ValueError(f"invalid --trace: no such file {args.trace}")
        return build_workload(
            seed=args.seed,
            slo_mix=mix,
            trace=args.trace,
            num_requests=args.num_requests,
            rate_rps=args.rate,
            **fit,
        )
    if args.rate is None:
        raise ValueError("--dataset random needs --rate")
    params = {"burstiness": args.burstiness} if args.arrival == "gamma" else {}
    return build_workload(
        seed=args.seed,
        slo_mix=mix,
        arrival=make_arrival(args.arrival, rate_rps=args.rate, **params),
        prompt_lens=parse_lengths(args.input_len),
        output_lens=parse_lengths(args.output_len),
        num_requests=args.num_requests or 100,
        **fit,
    )


def _run_info(args: argparse.Namespace, num_requests: int) -> dict[str, Any]:
    """vLLM's descriptive keys of a run."""
    return {
        "date": time.strftime("%Y%m%d-%H%M%S"),
        "backend": "openai-chat" if args.endpoint == "chat" else "openai",
        "model_id": args.model,
        "tokenizer_id": str(args.tokenizer) if args.tokenizer else None,
        "num_prompts": num_requests,
        "request_rate": args.rate,
        "burstiness": args.burstiness,
        "max_concurrency": args.max_concurrency,
        "num_instances": args.instances,
    }
