"""Test pools: small KV caches with seeded contents, built on a transport's memory, and an owner
process that serves such pools until told to close (or is killed)."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
from dataclasses import dataclass

import torch

from hyperflexis.engine.config import ModelConfig
from hyperflexis.engine.kv_cache import KVCache, kv_cache_bytes
from hyperflexis.transfer import KVTransport, PoolDescriptor, create_kv_transport

PROCESS_TIMEOUT_S = 60.0  # bound on every wait for the owner process


@dataclass(frozen=True, slots=True)
class Shape:
    """A pool's layout, as the test parameters spell it."""

    num_layers: int
    num_kv_heads: int
    head_dim: int
    block_size: int
    num_blocks: int
    dtype: str  # torch dtype name

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.dtype)
        assert isinstance(dtype, torch.dtype)
        return dtype

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


FLOAT32 = Shape(
    num_layers=3, num_kv_heads=2, head_dim=8, block_size=4, num_blocks=12, dtype="float32"
)
BFLOAT16 = Shape(
    num_layers=2, num_kv_heads=4, head_dim=16, block_size=8, num_blocks=9, dtype="bfloat16"
)


def build_cache(transport: KVTransport, shape: Shape, device: str = "cpu") -> KVCache:
    config = shape.config()
    num_bytes = kv_cache_bytes(config, shape.num_blocks, shape.block_size, shape.torch_dtype)
    storage = transport.allocate(num_bytes, torch.device(device))
    return KVCache(
        config, shape.num_blocks, shape.block_size, shape.torch_dtype, storage.device, storage
    )


def fill(cache: KVCache, seed: int) -> None:
    """Seeded random contents: every block of every layer differs."""
    generator = torch.Generator().manual_seed(seed)
    for tensor in (*cache.key_caches, *cache.value_caches):
        tensor.copy_(torch.randn(tensor.shape, generator=generator).to(tensor.dtype))  # any device


def expected_cache(shape: Shape, seed: int) -> KVCache:
    """A plain cache with the contents `fill(seed)` gives: what a reader must see."""
    cache = KVCache(
        shape.config(), shape.num_blocks, shape.block_size, shape.torch_dtype, torch.device("cpu")
    )
    fill(cache, seed)
    return cache


def assert_blocks_equal(
    local: KVCache, source: KVCache, remote_blocks: list[int], local_blocks: list[int]
) -> None:
    """Bit for bit: local block local_blocks[i] holds source block remote_blocks[i]."""
    for mine, theirs in (
        *zip(local.key_caches, source.key_caches, strict=True),
        *zip(local.value_caches, source.value_caches, strict=True),
    ):
        got = mine[torch.tensor(local_blocks, device=mine.device)].cpu()
        want = theirs[torch.tensor(remote_blocks)]
        assert torch.equal(got.view(torch.uint8), want.view(torch.uint8))


def serve_pools(
    transport_name: str,
    shapes: list[Shape],
    seed: int,
    device: str,
    conn: multiprocessing.connection.Connection,
) -> None:
    """Owner process: register one transport per shape, send their descriptors, then close all
    when told to (or never, when the test kills this process)."""
    transports = [create_kv_transport(transport_name) for _ in shapes]
    caches = []
    for index, (transport, shape) in enumerate(zip(transports, shapes, strict=True)):
        cache = build_cache(transport, shape, device)
        fill(cache, seed + index)
        caches.append(cache)
    conn.send([t.register(c) for t, c in zip(transports, caches, strict=True)])
    if conn.poll(PROCESS_TIMEOUT_S):
        conn.recv()
    for transport in transports:
        transport.close()
    conn.send("closed")


class OwnerProcess:
    """A real owner process for cross-process tests; `stop` closes it cleanly, `kill` does not."""

    def __init__(
        self, transport_name: str, shapes: list[Shape], seed: int, device: str = "cpu"
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=serve_pools, args=(transport_name, shapes, seed, device, child), daemon=True
        )
        self.process.start()
        child.close()
        if not self._conn.poll(PROCESS_TIMEOUT_S):
            self.kill()
            raise TimeoutError("the owner process did not register its pools")
        self.descriptors: list[PoolDescriptor] = self._conn.recv()

    def stop(self) -> None:
        if self.process.is_alive():
            self._conn.send("close")
            assert self._conn.poll(PROCESS_TIMEOUT_S), "the owner did not close"
            assert self._conn.recv() == "closed"
        self.process.join(PROCESS_TIMEOUT_S)
        assert self.process.exitcode == 0

    def kill(self) -> None:
        self.process.kill()
        self.process.join(PROCESS_TIMEOUT_S)
