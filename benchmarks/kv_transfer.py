"""KV transfer bandwidth of each transport against a plain memory copy, measured in one run.

For each block shape (Llama-3.1-8B's 16-token bf16 block, 2 MiB; the built-in default model's
16-token fp32 block, 64 KiB) and each transport, an owner process registers a pool of
`--max-blocks` blocks filled with data, and this process reads 1 to `--max-blocks` of them into its
own pool with the blocking `read` (start, then wait on completion). The ceiling is a preallocated
`copy_` of the same number of bytes between two tensors of this process, alternated with the reads
(the machine is shared: each figure is the best of `--repeats`). Block lists are contiguous
(`--scattered`: random blocks on both sides, one run per block). Target: shm >= 80% of the
ceiling from 64 blocks up.

`--parts split`: the time split of one P/D request on real engines (the built-in model, or
`--model`), per prompt length: P's prefill step (prompt and first token), the pull of its leased
blocks into D's pool over the transport, and D's first decode step; against the collocated
baseline, one engine's prefill step plus its first decode step (the second token's latency);
ratio = P/D / collocated, the median of the per-run ratios.
Both engines live in this process, each pool registered with its own transport.

    nice .venv/bin/python benchmarks/kv_transfer.py [--transports shm,torch-dist,nixl]
        [--shapes llama-3.1-8b,default] [--max-blocks 512] [--repeats 10] [--scattered]
        [--parts bandwidth,split] [--prompt-lens 16,64,256,1024] [--model DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import multiprocessing.connection
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from hyperflexis.core.sampling import SamplingParams
from hyperflexis.engine.config import ModelConfig
from hyperflexis.engine.factory import InstanceSpec, build_engine
from hyperflexis.engine.kv_cache import KVCache, kv_cache_bytes
from hyperflexis.engine.loop import LLMEngine
from hyperflexis.engine.resume import Resume
from hyperflexis.scheduler import SchedulerConfig
from hyperflexis.scheduler.config import Role
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


# -- the time split of one P/D request -------------------------------------------------------

SPLIT_KV_BYTES = 256 << 20
GREEDY_TWO = SamplingParams(temperature=0.0, max_tokens=2, ignore_eos=True)


def split_engine(role: Role, transport: KVTransport | None, model: str | None) -> LLMEngine:
    config = SchedulerConfig(role=role, max_num_batched_tokens=16384)  # a prompt in one step
    spec = InstanceSpec(role, model, "fcfs", config, kv_cache_bytes=SPLIT_KV_BYTES)
    storage = None if transport is None else transport.allocate
    built = build_engine(spec, kv_storage=storage)
    if transport is not None:
        transport.register(built.runner.kv_cache)
    return built.engine


def split_once(
    engines: tuple[LLMEngine, LLMEngine, LLMEngine],
    transports: tuple[KVTransport, KVTransport],
    prompt: list[int],
    request_id: str,
) -> tuple[float, float, float, float, int]:
    """(prefill s, transfer s, first decode s, collocated second-token s, blocks)."""
    prefill, decode, mixed = engines
    owner, reader = transports
    prefill.add_request(prompt, GREEDY_TWO, request_id=request_id)
    prefill_s = timed_s(prefill.step)
    [lease] = prefill.scheduler.leases.take_new()
    resume = Resume(request_id, prompt, [5], GREEDY_TWO, age_s=prefill_s, ttft_s=prefill_s)
    blocks = decode.resume(dataclasses.replace(resume, kv_tokens=lease.num_tokens))
    peer = owner.describe()
    transfer_s = timed_s(lambda: reader.read(peer, lease.block_ids, blocks, TIMEOUT_S))
    decode.kv_arrived(request_id)
    decode_s = timed_s(decode.step)
    prefill.release_lease(request_id)
    mixed.add_request(prompt, GREEDY_TWO, request_id=request_id)
    collocated_s = timed_s(mixed.step) + timed_s(mixed.step)
    for engine in engines:
        assert not engine.has_unfinished(), "the request did not finish in two tokens"
    return prefill_s, transfer_s, decode_s, collocated_s, len(lease.block_ids)


def time_split(name: str, args: argparse.Namespace) -> None:
    owner, reader = create_kv_transport(name), create_kv_transport(name)
    try:
        engines = (
            split_engine("prefill", owner, args.model),
            split_engine("decode", reader, args.model),
            split_engine("mixed", None, args.model),
        )
        print(f"\n{name}: one P/D request, median of {args.repeats} (ms)")
        print(
            f"{'prompt':>6} {'blocks':>6} {'MiB':>6} {'prefill':>8} {'transfer':>8} "
            f"{'decode':>7} {'P/D':>7} {'colloc':>7} ratio"
        )
        bytes_per_block = owner.describe().layout.bytes_per_block
        for length in map(int, args.prompt_lens.split(",")):
            prompt = [3 + (7 * i) % 200 for i in range(length)]
            split_once(engines, (owner, reader), prompt, f"warm-{length}")
            runs = [
                split_once(engines, (owner, reader), prompt, f"r{length}-{i}")
                for i in range(args.repeats)
            ]
            # Medians: the machine is shared, and a sum of per-part minima would flatter P/D.
            pre, xfer, dec, col = (statistics.median(r[i] for r in runs) * 1e3 for i in range(4))
            pd = statistics.median(sum(r[:3]) for r in runs) * 1e3
            ratio = statistics.median(sum(r[:3]) / r[3] for r in runs)
            blocks = runs[0][4]
            print(
                f"{length:>6} {blocks:>6} {blocks * bytes_per_block / 2**20:>6.2f} {pre:>8.2f} "
                f"{xfer:>8.3f} {dec:>7.2f} {pd:>7.2f} {col:>7.2f} {ratio:>5.2f}"
            )
    finally:
        reader.close()
        owner.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transports", default="shm,torch-dist,nixl")
    parser.add_argument("--shapes", default="llama-3.1-8b,default")
    parser.add_argument("--max-blocks", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--scattered", action="store_true", help="random block lists")
    parser.add_argument("--parts", default="bandwidth,split")
    parser.add_argument("--prompt-lens", default="16,64,256,1024")
    parser.add_argument("--model", default=None, help="checkpoint folder (default: built-in)")
    args = parser.parse_args()
    # One intra-op thread for reads and ceiling alike: on a shared machine a parallel copy waits
    # for its slowest OpenMP thread to be scheduled, which made both figures swing tenfold.
    torch.set_num_threads(1)
    transports = args.transports.split(",")
    if "nixl" in transports and load_nixl() is None:
        print("nixl: not installed (pip install --no-deps nixl-cu12), skipped")
        transports.remove("nixl")
    parts = args.parts.split(",")
    for shape_name in args.shapes.split(",") if "bandwidth" in parts else []:
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

    for name in transports if "split" in parts else []:
        time_split(name, args)


if __name__ == "__main__":
    main()
