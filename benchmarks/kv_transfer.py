"""KV transfer bandwidth of each transport against a plain memory copy, measured in one run.

For each block shape (Llama-3.1-8B's 16-token bf16 block, 2 MiB; the built-in default model's
16-token fp32 block, 64 KiB) and each transport, an owner process registers a pool of
`--max-blocks` blocks filled with data, and this process reads 1 to `--max-blocks` of them into its
own pool with the blocking `read` (start, then wait on completion). The ceiling is a preallocated
`copy_` of the same number of bytes between two tensors of this process, alternated with the reads
(the machine is shared: each figure is the best of `--repeats`). Block lists are contiguous
(`--scattered`: random blocks on both sides, one run per block). Target: shm >= 80% of the
ceiling from 64 blocks up.

    nice .venv/bin/python benchmarks/kv_transfer.py [--transports shm,torch-dist,nixl]
        [--shapes llama-3.1-8b,default] [--max-blocks 512] [--repeats 10] [--scattered]
"""

from __future__ import annotations

import argparse
import multiprocessing
import multiprocessing.connection
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hyperflexis.engine.config import ModelConfig
from hyperflexis.engine.kv_cache import KVCache, kv_cache_bytes
from hyperflexis.transfer import KVTransport, PoolDescriptor, create_kv_transport
from hyperflexis.transfer.nixl import load_nixl

BLOCK_COUNTS = (1, 4, 16, 64, 128, 256, 512)
TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class BlockShape:
    """One model's KV block."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int  # tokens per block
    dtype: torch.dtype

    def config(self) -> ModelConfig:
        return ModelConfig.from_dict(
            {
                "architectures": ["LlamaForCausalLM"],
                "vocab_size": 32,
                "hidden_size": self.num_kv_heads * self.head_dim,
                "intermediate_size": 32,
                "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_kv_heads,
                "num_key_value_heads": self.num_kv_heads,
                "head_dim": self.head_dim,
                "max_position_embeddings": 128,
            }
        )

    def bytes_per_block(self) -> int:
        return kv_cache_bytes(self.config(), 1, self.block_size, self.dtype)


SHAPES = {
    "llama-3.1-8b": BlockShape(32, 8, 128, 16, torch.bfloat16),  # 2 MiB per block
    "default": BlockShape(4, 2, 64, 16, torch.float32),  # the built-in model's, 64 KiB
}


def build_pool(transport: KVTransport, shape: BlockShape, num_blocks: int) -> KVCache:
    config, cpu = shape.config(), torch.device("cpu")
    storage = transport.allocate(
        kv_cache_bytes(config, num_blocks, shape.block_size, shape.dtype), cpu
    )
    return KVCache(config, num_blocks, shape.block_size, shape.dtype, cpu, storage)


def serve(
    name: str, shape: BlockShape, num_blocks: int, conn: multiprocessing.connection.Connection
) -> None:
    """The owner: a filled pool (no zero pages left to read for free), until told to stop."""
    with create_kv_transport(name) as transport:
        pool = build_pool(transport, shape, num_blocks)
        for tensor in (*pool.key_caches, *pool.value_caches):
            tensor.fill_(1.5)
        conn.send(transport.register(pool))
        conn.poll(TIMEOUT_S)


def timed_s(action: Callable[[], object]) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def read_and_copy_s(
    reader: KVTransport,
    peer: PoolDescriptor,
    blocks: tuple[list[int], list[int]],
    num_bytes: int,
    repeats: int,
) -> tuple[float, float]:
    """Best read time and best ceiling `copy_` time, alternated so that both see the same load."""
    source = torch.full((num_bytes,), 3, dtype=torch.uint8)
    dest = torch.zeros(num_bytes, dtype=torch.uint8)  # zeros touches the pages: preallocated
    remote, local = blocks
    dest.copy_(source)
    reader.read(peer, remote, local, TIMEOUT_S)  # warm: mapping, link, page faults
    read_s, copy_s = [], []
    for _ in range(repeats):
        read_s.append(timed_s(lambda: reader.read(peer, remote, local, TIMEOUT_S)))
        copy_s.append(timed_s(lambda: dest.copy_(source)))
    return min(read_s), min(copy_s)


def block_lists(
    num: int, num_blocks: int, scattered: bool, seed: int
) -> tuple[list[int], list[int]]:
    if not scattered:
        return list(range(num)), list(range(num))
    rng = random.Random(seed)
    return rng.sample(range(num_blocks), num), rng.sample(range(num_blocks), num)


def measure(
    name: str, shape: BlockShape, args: argparse.Namespace
) -> list[tuple[int, float, float]]:
    """(blocks, transport seconds, copy_ seconds) for each block count."""
    context = multiprocessing.get_context("spawn")
    conn, child = context.Pipe()
    owner = context.Process(target=serve, args=(name, shape, args.max_blocks, child), daemon=True)
    owner.start()
    try:
        if not conn.poll(TIMEOUT_S):
            raise TimeoutError(f"{name}: the owner did not register")
        peer: PoolDescriptor = conn.recv()
        rows = []
        with create_kv_transport(name) as reader:
            reader.register(build_pool(reader, shape, args.max_blocks))
            counts = [n for n in BLOCK_COUNTS if n <= args.max_blocks]
            for num in counts:
                blocks = block_lists(num, args.max_blocks, args.scattered, seed=num)
                num_bytes = num * shape.bytes_per_block()
                rows.append((num, *read_and_copy_s(reader, peer, blocks, num_bytes, args.repeats)))
        conn.send("stop")
        owner.join(TIMEOUT_S)
        return rows
    finally:
        if owner.is_alive():
            owner.kill()
            owner.join(TIMEOUT_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transports", default="shm,torch-dist,nixl")
    parser.add_argument("--shapes", default="llama-3.1-8b,default")
    parser.add_argument("--max-blocks", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--scattered", action="store_true", help="random block lists")
    args = parser.parse_args()
    # One intra-op thread for reads and ceiling alike: on a shared machine a parallel copy waits
    # for its slowest OpenMP thread to be scheduled, which made both figures swing tenfold.
    torch.set_num_threads(1)
    transports = args.transports.split(",")
    if "nixl" in transports and load_nixl() is None:
        print("nixl: not installed (pip install --no-deps nixl-cu12), skipped")
        transports.remove("nixl")
    for shape_name in args.shapes.split(","):
        shape = SHAPES[shape_name]
        block_mib = shape.bytes_per_block() / 2**20
        lists = "scattered" if args.scattered else "contiguous"
        print(f"\n{shape_name}: {block_mib:g} MiB per block, {lists} block lists")
        print(f"{'transport':<11} {'blocks':>6} {'MiB':>7} {'GB/s':>7} {'copy_ GB/s':>10} ratio")
        for name in transports:
            for num, read_s, ceiling_s in measure(name, shape, args):
                num_bytes = num * shape.bytes_per_block()
                mib, gb = num_bytes / 2**20, num_bytes / 1e9
                print(
                    f"{name:<11} {num:>6} {mib:>7.1f} {gb / read_s:>7.2f} "
                    f"{gb / ceiling_s:>10.2f} {ceiling_s / read_s:>5.2f}"
                )


if __name__ == "__main__":
    main()
