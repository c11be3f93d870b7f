"""Weight load time of a new instance from a live peer's shared-memory segment against disk, warm
and cold, on a generated random Llama checkpoint (default 4 layers of hidden 2048, vocab 32000,
fp32: 1.16 GiB).

The checkpoint is written with the default model's random-weight writer and safetensors. Each path
runs `transfer.weights.load_weights` with one source, so the peer figure includes its checks
(names, shapes, dtypes, the owner's liveness and the crc32 of every copied byte). Disk warm reads
from the page cache; disk cold first drops the file's pages with posix_fadvise(DONTNEED). The
publisher is this process (`PublishedWeights` of the disk-loaded model): a reader in another
process maps the same /dev/shm file the same way. Each figure is the best of `--repeats`.
Target: peer >= 10x faster than cold disk.

    nice .venv/bin/python benchmarks/weight_loading.py [--layers 4] [--hidden 2048] [--repeats 3]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors.torch import save_file

from hyperflexis.engine.default_model import random_weights
from hyperflexis.transfer.weights import (
    DiskSource,
    PeerSource,
    PublishedWeights,
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="weight-loading-", dir="/var/tmp") as tmp:
        folder = Path(tmp)
        num_bytes = write_checkpoint(folder, args.layers, args.hidden)
        print(f"checkpoint: {num_bytes / 2**30:.2f} GiB in {folder}")
        cold = best_load(folder, DiskSource(), args.repeats, lambda: drop_page_cache(folder))
        warm = best_load(folder, DiskSource(), args.repeats, lambda: None)
        publisher = PublishedWeights(load_weights(folder, "float32", "cpu", [DiskSource()]).model)
        gc.collect()
        try:
            peer = best_load(folder, PeerSource(publisher.manifest), args.repeats, lambda: None)
        finally:
            publisher.close()
    cold_s, warm_s = cold["read_s"], warm["read_s"]
    peer_s = sum(peer.values())
    phases = ", ".join(f"{name} {s * 1e3:.0f} ms" for name, s in peer.items())
    gbps = num_bytes / 1e9
    print(f"disk cold: {cold_s:.3f} s ({gbps / cold_s:.2f} GB/s)")
    print(f"disk warm: {warm_s:.3f} s ({gbps / warm_s:.2f} GB/s)")
    print(f"peer:      {peer_s:.3f} s ({gbps / peer_s:.2f} GB/s; {phases})")
    print(f"peer vs disk cold: {cold_s / peer_s:.1f}x; vs disk warm: {warm_s / peer_s:.1f}x")


if __name__ == "__main__":
    main()
