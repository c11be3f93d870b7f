"""Weight loading and time until serving of a new instance, from a live peer's shared-memory
segment against disk, warm and cold, on a generated random Llama checkpoint (default 4 layers of
hidden 2048, vocab 32000, fp32: 1.16 GiB). Issue 15's benchmark; targets: load >= 10x faster
than cold disk, time until serving >= 3x.

Load alone: `transfer.weights.load_weights` with one source, in this process, so the peer figure
includes its checks (names, shapes, dtypes, the owner's liveness, the xxh3 of every byte). Disk
warm reads from the page cache; disk cold first drops the file's pages (posix_fadvise DONTNEED).
The publisher is this process (`PublishedWeights` of the disk-loaded model). Best of `--repeats`.

Time until serving: real instance processes (`backends/worker.py`), from the moment one is asked
for until its first token of a greedy one-token request reaches this process, split into start-up
(process start or a pre-started worker's hand-over), weights, warm-up (the rest of the engine's
build) and the first step (what remains: the first request's round trip and forward pass). The
peer is a live instance that published its weights (`publish_weights`). Both sources start from
the same point, reported separately: a fresh process each, or a pre-started worker each
(`backends/prestart.py`, all started and idle before the first measurement).

    PYTHONPATH=src nice .venv/bin/python benchmarks/weight_loading.py [--layers 4] [--hidden 2048]
        [--repeats 3] [--serve-repeats 1]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import save_file

from hyperflexis.backends.local import InstanceHandle, InstancePool
from hyperflexis.backends.messages import AddRequest, InstanceReady, Shutdown, StepReport
from hyperflexis.backends.prestart import PrestartPool
from hyperflexis.core.sampling import SamplingParams
from hyperflexis.core.slo import SLO
from hyperflexis.engine.default_model import default_model_path, random_weights
from hyperflexis.engine.factory import InstanceSpec
from hyperflexis.transfer.weights import (
    DiskSource,
    PeerSource,
    PublishedWeights,
    WeightManifest,
    WeightSource,
    load_weights,
)

VOCAB_SIZE = 32000


def write_checkpoint(folder: Path, num_layers: int, hidden: int) -> int:
    """A random Llama checkpoint in `folder`, synced to disk; returns its weight bytes."""
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": VOCAB_SIZE,
        "hidden_size": hidden,
        "intermediate_size": hidden * 11 // 4,
        "num_hidden_layers": num_layers,
        "num_attention_heads": hidden // 128,
        "num_key_value_heads": max(1, hidden // 512),
        "max_position_embeddings": 4096,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    weights = random_weights(config, seed=0)
    num_bytes = sum(t.numel() * t.element_size() for t in weights.values())
    path = folder / "model.safetensors"
    save_file(weights, str(path), {"format": "pt"})
    del weights
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages cannot be dropped: write them out before any cold read
    finally:
        os.close(fd)
    return num_bytes


def drop_page_cache(folder: Path) -> None:
    for path in folder.iterdir():
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def best_load(
    folder: Path, source: WeightSource, repeats: int, before: Callable[[], None]
) -> dict[str, float]:
    """The phase times of the fastest of `repeats` loads (each model freed before the next)."""
    best: dict[str, float] | None = None
    for _ in range(repeats):
        before()
        gc.collect()
        phases = load_weights(folder, "float32", "cpu", [source]).phases_s
        if best is None or sum(phases.values()) < sum(best.values()):
            best = phases
    assert best is not None
    return best


SERVE_PROMPT = [5, 17, 42, 9]
SERVE_TIMEOUT_S = 300.0
PHASES = ("startup_s", "weights_s", "warmup_s")


def serving_spec(folder: Path, instance_id: str, **kwargs: Any) -> InstanceSpec:
    """The generated checkpoint has no tokenizer: the default model's decodes (unknown ids
    decode to nothing; the figures count tokens, not text)."""
    tokenizer = str(default_model_path())
    return InstanceSpec(
        instance_id, str(folder), "fcfs", kv_cache_bytes=16 * 2**20, tokenizer=tokenizer, **kwargs
    )


def until_first_token(handle: InstanceHandle, start: float) -> float:
    """Send a one-token greedy request; seconds from `start` until its token arrives."""
    params = SamplingParams(temperature=0.0, max_tokens=1, ignore_eos=True)
    handle.send(AddRequest("first", SERVE_PROMPT, params, SLO(60.0, 10.0), time.monotonic()))
    deadline = time.monotonic() + SERVE_TIMEOUT_S
    while handle.reports.poll(max(0.0, deadline - time.monotonic())):
        report = handle.reports.recv()
        if isinstance(report, StepReport) and any(d.token_ids for d in report.deltas):
            return time.perf_counter() - start
    raise RuntimeError(f"{handle.instance_id} served no token in {SERVE_TIMEOUT_S} s")


def ready_of(handle: InstanceHandle) -> InstanceReady:
    assert handle.reports.poll(SERVE_TIMEOUT_S), f"{handle.instance_id} never got ready"
    ready = handle.reports.recv()
    if not isinstance(ready, InstanceReady):
        raise RuntimeError(f"{handle.instance_id} failed to start: {ready!r}")
    return ready


def stop(handle: InstanceHandle) -> None:
    handle.send(Shutdown())
    handle.send(None)
    handle.process.join(30.0)
    if handle.process.is_alive():
        handle.process.kill()
        handle.process.join(5.0)
    handle.commands.close()
    handle.reports.close()


def time_start(
    spec: InstanceSpec, prestarted: PrestartPool | None
) -> tuple[float, dict[str, float], str]:
    """One instance asked for, measured to its first token, then stopped: (seconds, phases
    with "first_step_s", its weight source)."""
    start = time.perf_counter()
    if prestarted is None:
        pool = InstancePool([spec])
        pool.start(SERVE_TIMEOUT_S)
        handle = pool.get(spec.instance_id)
        ready = handle.ready
    else:
        handle = prestarted.take(spec)
        ready = ready_of(handle)
    ready_s = time.perf_counter() - start
    total_s = until_first_token(handle, start)
    stop(handle)
    assert ready is not None
    phases = {name: ready.start_phases_s[name] for name in PHASES}
    phases["first_step_s"] = total_s - ready_s
    return total_s, phases, ready.weight_source


def serving_runs(
    folder: Path, manifest: WeightManifest, repeats: int, prestarted: PrestartPool | None
) -> dict[str, tuple[float, dict[str, float]]]:
    """Best time until serving per source, each start as `prestarted` says."""
    sources: dict[str, tuple[Callable[[], None], dict[str, Any]]] = {
        "disk cold": (lambda: drop_page_cache(folder), {}),
        "disk warm": (lambda: None, {}),
        "peer": (lambda: None, {"weight_source": "peer", "peer_weights": manifest}),
    }
    best: dict[str, tuple[float, dict[str, float]]] = {}
    for index in range(repeats):
        for name, (before, fields) in sources.items():
            before()
            spec = serving_spec(folder, f"new-{index}-{name.replace(' ', '-')}", **fields)
            total_s, phases, source = time_start(spec, prestarted)
            assert source == name.split()[0], f"{name} loaded from {source}"
            if name not in best or total_s < best[name][0]:
                best[name] = (total_s, phases)
    return best


def print_serving(label: str, runs: dict[str, tuple[float, dict[str, float]]]) -> None:
    print(f"time until serving, {label}:")
    for name, (total_s, phases) in runs.items():
        split = ", ".join(f"{k.removesuffix('_s')} {v:.3f}" for k, v in phases.items())
        print(f"  {name:9s} {total_s:.3f} s ({split})")
    peer_s = runs["peer"][0]
    print(
        f"  peer vs disk cold: {runs['disk cold'][0] / peer_s:.1f}x; "
        f"vs disk warm: {runs['disk warm'][0] / peer_s:.1f}x"
    )


def measure_serving(folder: Path, repeats: int) -> None:
    publisher = InstancePool([serving_spec(folder, "peer", publish_weights=True)])
    publisher.start(SERVE_TIMEOUT_S)
    prestarted = PrestartPool(3 * repeats, refill=False)
    try:
        ready = publisher.get("peer").ready
        assert ready is not None and ready.weights_manifest is not None
        manifest = ready.weights_manifest
        print_serving("fresh process", serving_runs(folder, manifest, repeats, None))
        prestarted.start()
        prestarted.wait_idle(SERVE_TIMEOUT_S)
        time.sleep(2.0)  # let idle CPU accrue for the cost figure
        costs = prestarted.costs()
        pss = sum(c.pss_bytes for c in costs) / len(costs)
        cpu = sum(c.idle_cpu_s for c in costs) / len(costs)
        print(
            f"pre-start pool: {len(costs)} idle workers, {pss / 2**20:.0f} MiB PSS each, "
            f"{cpu:.3f} CPU s each over 2 s idle"
        )
        print_serving("pre-started worker", serving_runs(folder, manifest, repeats, prestarted))
    finally:
        prestarted.stop()
        publisher.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve-repeats", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="weight-loading-", dir="/var/tmp") as tmp:
        folder = Path(tmp)
        num_bytes = write_checkpoint(folder, args.layers, args.hidden)
        print(f"checkpoint: {num_bytes / 2**30:.2f} GiB in {folder}")
        measure_load(folder, num_bytes, args.repeats)
        measure_serving(folder, args.serve_repeats)


def measure_load(folder: Path, num_bytes: int, repeats: int) -> None:
    cold = best_load(folder, DiskSource(), repeats, lambda: drop_page_cache(folder))
    warm = best_load(folder, DiskSource(), repeats, lambda: None)
    publisher = PublishedWeights(load_weights(folder, "float32", "cpu", [DiskSource()]).model)
    gc.collect()
    try:
        peer = best_load(folder, PeerSource(publisher.manifest), repeats, lambda: None)
    finally:
        publisher.close()
    cold_s, warm_s = cold["read_s"], warm["read_s"]
    peer_s = sum(peer.values())
    phases = ", ".join(f"{name} {s * 1e3:.0f} ms" for name, s in peer.items())
    gbps = num_bytes / 1e9
    print("weight load alone:")
    print(f"  disk cold: {cold_s:.3f} s ({gbps / cold_s:.2f} GB/s)")
    print(f"  disk warm: {warm_s:.3f} s ({gbps / warm_s:.2f} GB/s)")
    print(f"  peer:      {peer_s:.3f} s ({gbps / peer_s:.2f} GB/s; {phases})")
    print(f"  peer vs disk cold: {cold_s / peer_s:.1f}x; vs disk warm: {warm_s / peer_s:.1f}x")


if __name__ == "__main__":
    main()
