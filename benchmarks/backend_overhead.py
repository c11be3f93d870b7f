"""What running instances as Ray actors costs: the same load on the local backend and on the Ray
backend, and P/D with both instances on one Ray node against P and D on two nodes.

The Ray cluster is two nodes on loopback (`hyperflexis.bench.ray_cluster`: a head and a second
`ray start` standing for another machine), so the script re-runs itself inside a loopback-only
network namespace (`unshare -rn`). Each server runs alone, in turn, on the built-in tiny model
with a fixed step profile: 2 collocated instances (local; local with OMP_NUM_THREADS=1, as Ray
sets it for its actors; Ray with both on node1), then 1P+1D on Ray (both on node1: the link is
shm; then P on node1 and D on node2: torch-dist). Each gets the same closed-loop load
(`--requests` requests, `--concurrency` in flight, fixed prompt and output lengths, ignore_eos)
through the `hyperflexis bench` client, after a warm-up; the servers take turns `--repeats`
times (every other round in reverse order) and each figure is the median over the rounds, since
on a shared machine one run's figure follows the others' load.

Printed: output-token throughput, p50/p99 TTFT and TPOT per server, and the ratios ray/local
(targets: throughput >= 0.95, p50 TTFT <= 1.1) and across/one node (KV transfer time per request,
from the server's `hyperflexis:kv_transfer_seconds`); and first, free of the servers' noise, the
one thing the Ray backend adds per step: a round trip over its socket channel against the local
backend's pipe.

    .venv/bin/python benchmarks/backend_overhead.py [--requests 64] [--concurrency 8]
        [--prompt-len 96] [--output-len 32] [--repeats 2] [--round-trips 2000] [--out FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from hyperflexis.bench.client import ClientConfig, run_benchmark
from hyperflexis.bench.metrics import summarize
from hyperflexis.bench.ray_cluster import (
    ADDRESS,
    in_loopback_namespace,
    start_cluster,
    stop_cluster,
    unshare_available,
)
from hyperflexis.bench.server_info import metric_total, served_model_id
from hyperflexis.bench.server_process import ServerProcess, exit_on_sigterm
from hyperflexis.core.slo import SLOClasses
from hyperflexis.workloads import RequestSpec, make_workload

INSIDE = "HYPERFLEXIS_BENCH_IN_NAMESPACE"  # set when the script runs in its namespace
ONE_NODE = {"prefill": {"node1": 1}, "decode": {"node1": 1}, "mixed": {"node1": 1}}
TWO_NODES = {"prefill": {"node1": 1}, "decode": {"node2": 1}}
COLLOCATED = ["--instances", "2"]
PD = ["--prefill", "1", "--decode", "1"]
RAY = ["--backend", "ray", "--ray-address", ADDRESS]
SERVERS: dict[str, list[str]] = {
    "local": COLLOCATED,
    "local-omp1": COLLOCATED,  # as Ray runs its actors: OMP_NUM_THREADS=1 (see `ENV`)
    "ray": [*COLLOCATED, *RAY, "--ray-resources", json.dumps(ONE_NODE)],
    "ray-pd-one-node": [*PD, *RAY, "--ray-resources", json.dumps(ONE_NODE)],
    "ray-pd-two-nodes": [*PD, *RAY, "--ray-resources", json.dumps(TWO_NODES)],
}


ENV = {"local-omp1": {"OMP_NUM_THREADS": "1"}}  # what Ray sets for an actor with num_cpus=1


def main() -> int:
    args = _parse_args()
    if os.environ.get(INSIDE) != "1":
        why = unshare_available()
        if why is not None:
            print(f"backend_overhead: cannot run: {why}", file=sys.stderr)
            return 2
        argv = [sys.executable, *sys.argv]
        env = {**os.environ, INSIDE: "1"}
        return os.spawnvpe(os.P_WAIT, "unshare", in_loopback_namespace(argv), env)
    exit_on_sigterm()
    channels = _channel_round_trips(args.round_trips)
    with tempfile.TemporaryDirectory(prefix="hf-bench-", dir="/tmp") as folder:
        profile = Path(folder) / "profile.json"
        model = Path(folder) / "model"
        _fixtures(model, profile)
        common = ["--model", str(model), "--profile", str(profile)]
        start_cluster(Path(folder) / "ray")  # before any measurement: its start takes CPU
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in SERVERS}
        try:
            for repeat in range(args.repeats):  # every other repeat in the reverse order
                order = list(SERVERS) if repeat % 2 == 0 else list(SERVERS)[::-1]
                for name in order:
                    runs[name].append(_measure(common, name, args))
        finally:
            stop_cluster()
    _report({name: _median(rows) for name, rows in runs.items()}, runs, args)
    pipe_us, socket_us = channels["pipe"] * 1e6, channels["socket"] * 1e6
    print(f"channel round trip (2 KiB each way), median: pipe {pipe_us:.1f} us, socket (the ray")
    print(f"backend's) {socket_us:.1f} us: ratio {channels['socket'] / channels['pipe']:.2f}")
    return 0


def _echo(conn: Connection) -> None:
    """Child process: send back whatever arrives, until EOF."""
    with contextlib.suppress(EOFError, OSError):
        while True:
            conn.send_bytes(conn.recv_bytes())


def _echo_client(address: tuple[str, int], authkey: bytes) -> None:
    _echo(Client(address, authkey=authkey))


def _channel_round_trips(num: int) -> dict[str, float]:
    """Median seconds of one command-and-report round trip through a child process: over a
    pipe (the local backend's channel) and over an authenticated loopback socket (the Ray
    backend's, `backends/channels.py`), alternated three times."""
    context = multiprocessing.get_context("spawn")
    times: dict[str, list[float]] = {"pipe": [], "socket": []}
    payload = b"x" * 2048  # about one StepReport of a few requests' deltas
    for _ in range(3):
        for kind in times:
            if kind == "pipe":
                conn, child_end = context.Pipe()
                child = context.Process(target=_echo, args=(child_end,))
                child.start()
            else:
                authkey = os.urandom(32)
                with Listener(("127.0.0.1", 0), authkey=authkey) as listener:
                    child = context.Process(target=_echo_client, args=(listener.address, authkey))
                    child.start()
                    conn = listener.accept()
            for _ in range(num):
                start = time.perf_counter()
                conn.send_bytes(payload)
                conn.recv_bytes()
                times[kind].append(time.perf_counter() - start)
            conn.close()
            child.join(10)
    return {kind: statistics.median(values) for kind, values in times.items()}


def _median(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the repeats."""

    def mid(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return statistics.median(known) if known else None

    return {
        "throughput_tok_s": mid([r["throughput_tok_s"] for r in rows]),
        "ttft_s": {q: mid([r["ttft_s"][q] for r in rows]) for q in ("p50", "p99")},
        "tpot_s": {q: mid([r["tpot_s"][q] for r in rows]) for q in ("p50", "p99")},
        "kv_transfer_s_per_request": mid([r["kv_transfer_s_per_request"] for r in rows]),
    }


def _fixtures(model: Path, profile: Path) -> None:
    """The built-in tiny model and a fixed step profile (as the live tests use)."""
    from hyperflexis.engine.default_model import SEED, write_default_model
    from hyperflexis.perf import ProfiledCostModel, write_profile
    from hyperflexis.perf.profiled import ProfileSample

    model.mkdir()
    write_default_model(model, SEED)
    costs = ProfiledCostModel((2e-3, 1e-4, 1e-6, 2e-3, 1e-6))
    sample = ProfileSample([(16, 0)], [], 0.004)
    write_profile(profile, [sample], costs, {"model": "tiny", "device": "cpu", "dtype": "float32"})


def _measure(common: list[str], name: str, args: argparse.Namespace) -> dict[str, Any]:
    load = make_workload(
        RequestSpec(f"r{i:04d}", 0.0, args.prompt_len, args.output_len, "batch")
        for i in range(args.requests)
    )
    env = {**os.environ, **ENV.get(name, {})}
    with ServerProcess([*common, *SERVERS[name]], ready_timeout_s=300.0, env=env) as server:
        config = ClientConfig(
            server.url,
            served_model_id(server.url),
            max_concurrency=args.concurrency,
            show_progress=False,
        )
        run_benchmark(load[: args.concurrency], SLOClasses(), config)  # warm-up
        before = _transfer_s(server.url)
        bench = run_benchmark(load, SLOClasses(), config)
        after = _transfer_s(server.url)
    summary = summarize(bench.records, bench.duration_s)
    num_tokens = summary["num_completed"] * args.output_len
    num_pulls = after[1] - before[1]
    found = {
        "num_completed": summary["num_completed"],
        "throughput_tok_s": num_tokens / bench.duration_s,
        "ttft_s": summary["ttft_s"],
        "tpot_s": summary["tpot_s"],
        "kv_transfer_s_per_request": (after[0] - before[0]) / num_pulls if num_pulls else None,
    }
    print(f"{name}: {json.dumps(found)}", file=sys.stderr, flush=True)
    return found


def _transfer_s(url: str) -> tuple[float, float]:
    """The server's KV transfer seconds so far and the number of transfers."""
    name = "hyperflexis:kv_transfer_seconds"
    return metric_total(url, f"{name}_sum"), metric_total(url, f"{name}_count")


def _report(
    results: dict[str, dict[str, Any]],
    runs: dict[str, list[dict[str, Any]]],
    args: argparse.Namespace,
) -> None:
    print(f"medians over {args.repeats} repeats of {args.requests} requests each:")
    local, ray = results["local"], results["ray"]
    one, two = results["ray-pd-one-node"], results["ray-pd-two-nodes"]
    print(f"{'server':<18} {'tok/s':>8} {'TTFT p50':>9} {'p99':>8} {'TPOT p50':>9} {'p99':>8}")
    for name, row in results.items():
        ttft, tpot = row["ttft_s"], row["tpot_s"]
        print(
            f"{name:<18} {row['throughput_tok_s']:>8.1f} {ttft['p50'] * 1e3:>7.1f}ms "
            f"{ttft['p99'] * 1e3:>6.1f}ms {tpot['p50'] * 1e3:>7.2f}ms {tpot['p99'] * 1e3:>6.2f}ms"
        )
    ratios = {
        "throughput ray/local (target >= 0.95)": ray["throughput_tok_s"]
        / local["throughput_tok_s"],
        "p50 TTFT ray/local (target <= 1.1)": ray["ttft_s"]["p50"] / local["ttft_s"]["p50"],
        "p50 TPOT ray/local": ray["tpot_s"]["p50"] / local["tpot_s"]["p50"],
        "throughput ray/local-omp1": ray["throughput_tok_s"]
        / results["local-omp1"]["throughput_tok_s"],
        "p50 TTFT ray/local-omp1": ray["ttft_s"]["p50"] / results["local-omp1"]["ttft_s"]["p50"],
        "throughput P/D two nodes/one node": two["throughput_tok_s"] / one["throughput_tok_s"],
    }
    if one["kv_transfer_s_per_request"] and two["kv_transfer_s_per_request"]:
        ratios["KV transfer per request two nodes/one node"] = (
            two["kv_transfer_s_per_request"] / one["kv_transfer_s_per_request"]
        )
    for label, ratio in ratios.items():
        print(f"{label}: {ratio:.3f}")
    for name in ("ray-pd-one-node", "ray-pd-two-nodes"):
        per = results[name]["kv_transfer_s_per_request"]
        print(f"KV transfer per request, {name}: {per * 1e3:.2f} ms" if per else f"{name}: none")
    if args.out is not None:
        body = {"medians": results, "runs": runs, "ratios": ratios, "args": vars(args)}
        args.out.write_text(json.dumps(body, indent=1, default=str))


def _parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=96)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(main())
