"""`hyperflexis profile`: time real engine steps over a grid of batch shapes and fit the step
latency model of DESIGN.md §3; writes the profile JSON that `--profile` options read."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Measure step times over batch shapes and fit the step latency model."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", default=None, help="checkpoint folder (default: the built-in tiny model)"
    )
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="profile JSON to write (default: <cache>/profiles/<model>-<device>-<dtype>.json)",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a small grid with few repeats (tests, smoke runs)"
    )
    parser.add_argument(
        "--kv-cache-bytes", type=int, default=None, help="KV cache size (default: the engine's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the random token ids")


def run(args: argparse.Namespace) -> int:
    from hyperflexis.engine import ModelRunner
    from hyperflexis.engine.step_profiler import (
        FULL_GRID,
        QUICK_GRID,
        default_profile_path,
        run_profile,
    )
    from hyperflexis.perf.profiled import ProfileSample

    runner = ModelRunner(
        args.model, dtype=args.dtype, device=args.device, kv_cache_bytes=args.kv_cache_bytes
    )
    spec = QUICK_GRID if args.quick else FULL_GRID
    print(
        f"profiling {runner.model_path} on {args.device} ({args.dtype}): "
        f"{spec.num_warmup} warm-up + {spec.num_repeats} timed runs per shape",
        file=sys.stderr,
    )

    def report(sample: ProfileSample) -> None:
        print(
            f"  prefills={sample.prefills} decodes={len(sample.decodes)}"
            f"@{sample.decodes[0] if sample.decodes else 0}: {sample.step_s * 1e3:.2f} ms",
            file=sys.stderr,
        )

    out = args.out or default_profile_path(runner.model_path, args.device, args.dtype)
    meta: dict[str, object] = {
        "device": args.device,
        "dtype": args.dtype,
        "device_name": _device_name(args.device),
        "quick": bool(args.quick),
    }
    model, median_rel_error = run_profile(runner, spec, out, meta, args.seed, report)
    coefficients = ", ".join(f"{c:.3e}" for c in model.coefficients)
    print(f"coefficients [c0..c4]: [{coefficients}]")
    print(f"median relative error: {median_rel_error:.1%}")
    print(f"wrote {out}")
    return 0


def _device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return str(torch.cuda.get_device_name(torch.device(device)))
    return device
