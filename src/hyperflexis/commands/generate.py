"""`hyperflexis generate`: one completion, offline, on one engine instance."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Generate a completion offline on one instance."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hyperflexis.scheduler import policy_names

    parser.add_argument("--prompt", required=True, help="the prompt text")
    parser.add_argument(
        "--model", default=None, help="checkpoint folder (default: the built-in tiny model)"
    )
    parser.add_argument("--max-tokens", type=int, default=64, help="most tokens to generate")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (the default)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (reproducible output)")
    parser.add_argument(
        "--stop", action="append", default=[], help="stop string (repeat for several)"
    )
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--policy", default="fcfs", choices=policy_names(), help="scheduling policy"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="step latency profile JSON from `hyperflexis profile` (default: the cached one)",
    )
    parser.add_argument(
        "--chat", action="store_true", help="wrap the prompt as a user message in the chat template"
    )


def run(args: argparse.Namespace) -> int:
    from hyperflexis.core.sampling import SamplingParams
    from hyperflexis.llm import LLM

    cost_model = None  # policies that need one profile the model once and cache it
    if args.profile is not None:
        from hyperflexis.perf import OnlineCorrection, load_profile

        cost_model = OnlineCorrection(load_profile(args.profile))
    params = SamplingParams(
        max_tokens=args.max_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
        stop=list(args.stop),
    )
    llm = LLM(
        args.model,
        dtype=args.dtype,
        device=args.device,
        policy=args.policy,
        seed=args.seed,
        cost_model=cost_model,
    )
    if args.chat:
        (output,) = llm.chat([{"role": "user", "content": args.prompt}], params)
    else:
        (output,) = llm.generate(args.prompt, params)
    completion = output.outputs[0]
    print(completion.text)
    metrics = output.metrics
    ttft = metrics.ttft_s
    e2e = metrics.e2e_s
    print(
        f"[{len(completion.token_ids)} tokens, finish_reason={completion.finish_reason}, "
        f"ttft={ttft * 1e3 if ttft is not None else float('nan'):.1f} ms, "
        f"e2e={e2e * 1e3 if e2e is not None else float('nan'):.1f} ms]",
        file=sys.stderr,
    )
    return 0
