"""`hyperflexis serve`: an OpenAI-compatible API over several instance processes."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HELP = "Serve an OpenAI-compatible API over a multi-instance cluster."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hyperflexis.cluster import dispatcher_names
    from hyperflexis.commands.scheduler_flags import add_scheduler_arguments
    from hyperflexis.scheduler import policy_names
    from hyperflexis.server.config import DEFAULT_HOST, DEFAULT_PORT

    parser.add_argument(
        "--model", default=None, help="checkpoint folder (default: the built-in tiny model)"
    )
    parser.add_argument(
        "--instances", type=int, default=2, help="instance processes (model replicas)"
    )
    parser.add_argument(
        "--policy", default="hyperflexis", choices=policy_names(), help="instance scheduler"
    )
    parser.add_argument(
        "--dispatch", default="hyperflexis", choices=dispatcher_names(), help="global dispatcher"
    )
    parser.add_argument(
        "--slo-classes",
        type=Path,
        default=None,
        help="SLO classes file (.toml, .yaml, .json): classes, default, api_keys",
    )
    parser.add_argument("--host", default=DEFAULT_HOST, help="address to listen on")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="port (0: any free one; printed)"
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require 'Authorization: Bearer KEY' (this key or one from the SLO file's api_keys)",
    )
    parser.add_argument(
        "--max-queued",
        type=int,
        default=None,
        help="answer 503 when this many requests already wait for their first token",
    )
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16 or float16")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument(
        "--kv-cache-bytes", type=int, default=None, help="KV cache per instance (default: auto)"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="step latency profile JSON (default: the cached one, made once when missing)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads per instance process"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed")
    add_scheduler_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from hyperflexis.commands.scheduler_flags import scheduler_config
    from hyperflexis.server.config import ServerConfig
    from hyperflexis.server.serve import serve

    config = ServerConfig(
        model=args.model,
        num_instances=args.instances,
        policy=args.policy,
        dispatch=args.dispatch,
        slo_classes_path=args.slo_classes,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        max_queued=args.max_queued,
        dtype=args.dtype,
        device=args.device,
        kv_cache_bytes=args.kv_cache_bytes,
        profile_path=args.profile,
        scheduler=scheduler_config(args),
        num_threads=args.threads,
        seed=args.seed,
    )
    try:
        return serve(config)
    except RuntimeError as exc:  # an instance failed to start; its own error is in the message
        print(f"hyperflexis serve: error: {exc}", file=sys.stderr)
        return 1
