"""`hyperflexis serve`: an OpenAI-compatible API over several instance processes."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

HELP = "Serve an OpenAI-compatible API over a multi-instance cluster."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hyperflexis import __version__
    from hyperflexis.cluster import dispatcher_names
    from hyperflexis.commands.scheduler_flags import add_scheduler_arguments
    from hyperflexis.scheduler import policy_names
    from hyperflexis.server.config import DEFAULT_HOST, DEFAULT_MAX_REQUEST_BYTES, DEFAULT_PORT

    parser.add_argument(
        "model_tag", nargs="?", default=None, metavar="MODEL", help="checkpoint folder (as --model)"
    )
    parser.add_argument(
        "--model", default=None, help="checkpoint folder (default: the built-in tiny model)"
    )
    parser.add_argument("--version", action="version", version=__version__)
    _add_vllm_arguments(parser)
    parser.add_argument(
        "--instances",
        type=int,
        default=None,
        help="collocated instance processes (model replicas) (default: 2)",
    )
    parser.add_argument(
        "--prefill", type=int, default=None, help="P/D: prefill instances (with --decode)"
    )
    parser.add_argument(
        "--decode", type=int, default=None, help="P/D: decode instances (with --prefill)"
    )
    parser.add_argument(
        "--kv-transport",
        default=None,
        help="P/D: KV transport of every link: shm (default), torch-dist, nixl (when installed)",
    )
    parser.add_argument(
        "--kv-lease-s",
        type=float,
        default=30.0,
        help="P/D: a prefill instance frees a finished prompt's KV this long after it is ready "
        "unless its decode instance released it sooner (default: 30)",
    )
    parser.add_argument(
        "--links",
        default=None,
        help="P/D: which decode instances each prefill instance hands to: all (default), "
        "balanced (fan-out 2) or pairs",
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
        "--metrics-require-key",
        action="store_true",
        help="/metrics needs the API key too (default: open, as vLLM's, for Prometheus)",
    )
    parser.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        help="answer 413 to a request body larger than this (default: 8 MiB)",
    )
    parser.add_argument(
        "--max-queued",
        type=int,
        default=None,
        help="answer 503 when this many requests already wait for their first token "
        "(default: --max-num-seqs per live instance)",
    )
    _add_reliability_arguments(parser)
    _add_backend_arguments(parser)
    parser.add_argument(
        "--dtype",
        default="auto",
        help="auto (float32 on CPU, the checkpoint's on GPU), float32, bfloat16 or float16",
    )
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


def _add_reliability_arguments(parser: argparse.ArgumentParser) -> None:
    from hyperflexis.server import config

    parser.add_argument(
        "--request-timeout-s",
        type=float,
        default=config.DEFAULT_REQUEST_TIMEOUT_S,
        help="answer 503 (an error event in a stream) to a request not done within this "
        "(default: %(default)s; 0: no bound)",
    )
    parser.add_argument(
        "--instance-timeout-s",
        type=float,
        default=config.DEFAULT_INSTANCE_TIMEOUT_S,
        help="fail (kill, recover, replace) an instance silent this long (default: %(default)s)",
    )
    parser.add_argument(
        "--shutdown-timeout-s",
        type=float,
        default=config.DEFAULT_SHUTDOWN_TIMEOUT_S,
        help="SIGTERM: open requests get this long to finish (default: %(default)s)",
    )
    parser.add_argument(
        "--start-timeout-s",
        type=float,
        default=300.0,
        help="kill a replacement or a new (scaled-out) instance still loading after this long, "
        "or an instance whose role flip (--scaler) has not answered by then: a replacement is "
        "restarted, the others leave (default: %(default)s)",
    )
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="replacements of one failed instance within 5 minutes (default: %(default)s)",
    )
    parser.add_argument(
        "--peer-weights",
        action="store_true",
        help="instances publish their weights in shared memory and run on that one copy; a "
        "replacement maps a live peer's instead of loading from disk (falls back to disk)",
    )
    parser.add_argument(
        "--scaler",
        default=None,
        help="scale each pool (collocated, or P/D's prefill and decode) between "
        "--min-instances and --max-instances with this scaler (hyperflexis, threshold, static), "
        "as simulate --scaler, flipping P/D roles in place (default: fixed instances)",
    )
    parser.add_argument("--min-instances", type=int, default=1, help="with --scaler (default: 1)")
    parser.add_argument("--max-instances", type=int, default=4, help="with --scaler (default: 4)")
    parser.add_argument(
        "--control-interval",
        type=float,
        default=10.0,
        help="with --scaler: seconds between the scaler's decisions (default: 10)",
    )
    parser.add_argument(
        "--drain-deadline-s",
        type=float,
        default=5.0,
        help="with --scaler: a draining instance's decodes that would take longer than this "
        "move, KV and all, to another instance (default: 5)",
    )
    parser.add_argument(
        "--price-per-hour",
        type=float,
        default=0.0,
        help="USD per instance-hour, for the cost per pool in /metrics (default: 0)",
    )


def _add_backend_arguments(parser: argparse.ArgumentParser) -> None:
    from hyperflexis.server.config import BACKEND_NAMES

    parser.add_argument(
        "--backend",
        default="local",
        choices=BACKEND_NAMES,
        help="what runs the instances: local processes (default) or Ray actors across a Ray "
        "cluster's nodes (pip install 'hyperflexis[ray]')",
    )
    parser.add_argument(
        "--ray-address",
        default="auto",
        help="--backend ray: the cluster, auto (the one `ray start` runs here, default) or "
        "HOST:PORT",
    )
    parser.add_argument(
        "--ray-resources",
        type=_resources,
        default=None,
        help="--backend ray: custom Ray resources per role or instance id, as JSON, e.g. "
        '\'{"decode": {"node2": 1}}\' places decode instances where node2 is',
    )


def _resources(text: str) -> dict[str, dict[str, float]]:
    import json

    try:
        value = json.loads(text)
        return {
            str(key): {str(name): float(amount) for name, amount in bundle.items()}
            for key, bundle in value.items()
        }
    except (ValueError, AttributeError, TypeError) as exc:
        raise argparse.ArgumentTypeError(
            f"not a JSON object of resource objects (role -> {{name: amount}}): {exc}"
        ) from None


def _add_vllm_arguments(parser: argparse.ArgumentParser) -> None:
    """Settings a vLLM user passes, spelled as vLLM spells them."""
    parser.add_argument(
        "--served-model-name",
        nargs="+",
        default=None,
        help="names the API answers to; the first is the one /v1/models lists",
    )
    parser.add_argument(
        "--max-model-len", type=int, default=None, help="context limit below the model's"
    )
    parser.add_argument(
        "--chat-template", default=None, help="jinja2 chat template, or a file holding one"
    )
    parser.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    parser.add_argument("--block-size", type=int, default=16, help="tokens per KV cache block")
    parser.add_argument(
        "--max-num-seqs", type=int, default=256, help="most requests in one instance step"
    )
    parser.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=None,
        help="share of the GPU each instance may fill, KV cache included (default: half of "
        "what is free after loading)",
    )


def _model(args: argparse.Namespace) -> str | None:
    if args.model_tag is not None and args.model is not None and args.model_tag != args.model:
        raise ValueError(f"the model is given twice: {args.model_tag} and --model {args.model}")
    return args.model_tag if args.model_tag is not None else args.model


def _deployment(args: argparse.Namespace) -> dict[str, Any]:
    """Collocated (`--instances`) or P/D (`--prefill`, `--decode` and their link settings)."""
    pd = args.prefill is not None or args.decode is not None
    ray = args.backend == "ray"
    if pd and args.instances is not None:
        raise ValueError("invalid '--instances': give either --instances or --prefill and --decode")
    if not pd:
        for flag, value in (("--kv-transport", args.kv_transport), ("--links", args.links)):
            if value is not None:
                raise ValueError(f"invalid '{flag}': only for P/D (--prefill and --decode)")
        return {"num_instances": 2 if args.instances is None else args.instances}
    if args.prefill is None or args.decode is None:
        raise ValueError("invalid '--prefill'/'--decode': P/D needs both")
    return {
        "num_prefill": args.prefill,
        "num_decode": args.decode,
        # Ray's instances may sit on several nodes: shm or torch-dist per link.
        "kv_transport": args.kv_transport or ("auto" if ray else "shm"),
        "link_policy": args.links or "all",
    }


def run(args: argparse.Namespace) -> int:
    from hyperflexis.commands.scheduler_flags import scheduler_config
    from hyperflexis.server.config import ServerConfig
    from hyperflexis.server.serve import serve

    config = ServerConfig(
        model=_model(args),
        **_deployment(args),
        policy=args.policy,
        dispatch=args.dispatch,
        slo_classes_path=args.slo_classes,
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        metrics_require_key=args.metrics_require_key,
        max_request_bytes=args.max_request_bytes,
        max_queued=args.max_queued,
        request_timeout_s=args.request_timeout_s or None,
        instance_timeout_s=args.instance_timeout_s,
        shutdown_timeout_s=args.shutdown_timeout_s,
        max_restarts=args.max_restarts,
        start_timeout_s=args.start_timeout_s,
        peer_weights=args.peer_weights,
        backend=args.backend,
        ray_address=args.ray_address,
        ray_resources=args.ray_resources or {},
        price_per_hour=args.price_per_hour,
        scaler=args.scaler,
        min_instances=args.min_instances,
        max_instances=args.max_instances,
        control_interval_s=args.control_interval,
        drain_deadline_s=args.drain_deadline_s,
        dtype=args.dtype,
        device=args.device,
        kv_cache_bytes=args.kv_cache_bytes,
        profile_path=args.profile,
        # Not a scheduler knob (simulate results echo the knobs, whose keys stay fixed).
        scheduler=dataclasses.replace(
            scheduler_config(args), max_num_seqs=args.max_num_seqs, kv_lease_s=args.kv_lease_s
        ),
        num_threads=args.threads,
        seed=args.seed,
        served_model_names=tuple(args.served_model_name or ()),
        max_model_len=args.max_model_len,
        chat_template=args.chat_template,
        tokenizer=args.tokenizer,
        block_size=args.block_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
    )
    try:
        return serve(config)
    except RuntimeError as exc:  # an instance failed to start; its own error is in the message
        print(f"hyperflexis serve: error: {exc}", file=sys.stderr)
        return 1
