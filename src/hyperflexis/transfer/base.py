"""The KV transport interface (the worker half of DESIGN.md §10.1): register a local block pool,
describe it to a peer, read a peer's blocks into local ones, poll, close. The scheduler half (pin,
lease, release) lives with the scheduler and never sees a transport.

Reads are started and then polled, never awaited, because the engine loop must keep stepping the
other requests while one waits for its KV: the decode instance starts a read when it is told to
receive, and each step it polls the transfers in flight until they finish or fail. `wait` blocks
with a deadline for callers outside the loop (tests, benchmarks, tools).
"""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from hyperflexis.core.registry import Registry
from hyperflexis.engine.kv_cache import KVCache


class TransferError(RuntimeError):
    """A KV transfer failed; the decode instance recomputes the prompt instead."""


class PeerGoneError(TransferError):
    """The peer's pool is gone: its process exited, or it closed or unregistered the pool."""


class LayoutMismatchError(TransferError):
    """The two pools disagree on block layout or dtype, or a block id is out of range."""


class TransferTimeoutError(TransferError):
    """A transfer did not finish within its bound."""


@dataclass(frozen=True, slots=True)
class PoolLayout:
    """The shape of a block pool: what two pools must share for whole blocks to move."""

    num_blocks: int  # blocks in the pool (may differ between the two sides)
    block_size: int  # tokens per block
    num_layers: int  # decoder layers; each has one key and one value tensor
    num_kv_heads: int  # key/value heads per layer
    head_dim: int  # per-head width
    dtype: str  # torch dtype name, e.g. "bfloat16" (a string keeps descriptors torch-free)

    @classmethod
    def of(cls, kv_cache: KVCache) -> PoolLayout:
        num_blocks, block_size, num_kv_heads, head_dim = kv_cache.key_caches[0].shape
        return cls(
            num_blocks=num_blocks,
            block_size=block_size,
            num_layers=len(kv_cache.key_caches),
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            dtype=str(kv_cache.key_caches[0].dtype).removeprefix("torch."),
        )

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype = getattr(torch, self.dtype)
        assert isinstance(dtype, torch.dtype)
        return dtype

    @property
    def block_shape(self) -> tuple[int, int, int]:
        """One block of one layer's keys (or values): [block_size, num_kv_heads, head_dim]."""
        return (self.block_size, self.num_kv_heads, self.head_dim)

    @property
    def layer_shape(self) -> tuple[int, int, int, int]:
        """Each layer's key (and value) tensor: [num_blocks, block_size, num_kv_heads, head_dim]."""
        return (self.num_blocks, *self.block_shape)

    @property
    def bytes_per_layer_block(self) -> int:
        """Bytes of one block of one layer's keys (or values)."""
        return self.block_size * self.num_kv_heads * self.head_dim * self.torch_dtype.itemsize

    @property
    def bytes_per_block(self) -> int:
        """Bytes of one whole block: all layers, keys and values."""
        return 2 * self.num_layers * self.bytes_per_layer_block

    def check_compatible(self, peer: PoolLayout) -> None:
        """Raise LayoutMismatchError unless blocks of `peer` can be copied into this pool."""
        mine = (self.block_size, self.num_layers, self.num_kv_heads, self.head_dim, self.dtype)
        theirs = (peer.block_size, peer.num_layers, peer.num_kv_heads, peer.head_dim, peer.dtype)
        if mine != theirs:
            names = "(block_size, num_layers, num_kv_heads, head_dim, dtype)"
            raise LayoutMismatchError(f"pool layouts differ {names}: local {mine}, peer {theirs}")


@dataclass(frozen=True, slots=True)
class PoolDescriptor:
    """What a peer needs to read a registered pool; small and picklable (no tensors, no torch)."""

    transport: str  # the registry name of the transport that registered the pool
    owner: str  # unique name of the registered pool (shm segment, agent name, ...)
    owner_pid: int  # the owning process, for liveness checks on the same host
    layout: PoolLayout  # block layout and dtype
    handle: Any  # transport-specific, picklable: a port, UCX metadata, addresses


@dataclass(slots=True)
class Transfer:
    """One read in flight: `poll` it until it returns True (or raises)."""

    peer: PoolDescriptor  # where the blocks come from
    remote_blocks: tuple[int, ...]  # the peer's block ids, in order
    local_blocks: tuple[int, ...]  # where each lands locally, position for position
    num_bytes: int  # bytes moved when it completes
    state: Any = None  # transport-specific progress (a future, a work handle, ...)
    done: bool = False  # set once the blocks are in place


class KVTransport(ABC):
    """Moves whole KV blocks (all layers, keys and values) from a peer's pool into a local one.

    Life cycle: `allocate` the pool's memory (it must live where peers can read it), build the
    `KVCache` on it, `register` it, hand `describe()` to peers; readers `start_read` and `poll`;
    `close` unregisters, frees what the transport owns and ends its links. Every failure raises a
    `TransferError` subclass; nothing fails silently.
    """

    name: ClassVar[str]  # the registry name (what `--kv-transport` shows)

    def __init__(self) -> None:
        self._pool: KVCache | None = None
        self._descriptor: PoolDescriptor | None = None

    @abstractmethod
    def allocate(self, num_bytes: int, device: torch.device) -> torch.Tensor:
        """Zeroed flat uint8 memory for a pool: pass it as `KVCache(..., storage=...)`."""

    @abstractmethod
    def _register(self, kv_cache: KVCache, layout: PoolLayout) -> PoolDescriptor:
        """Expose `kv_cache` to peers and return its descriptor."""

    @abstractmethod
    def _start(self, transfer: Transfer) -> None:
        """Begin moving `transfer`'s blocks; set `transfer.state` (and `done` if finished)."""

    @abstractmethod
    def _progress(self, transfer: Transfer) -> bool:
        """True once `transfer`'s blocks are in the local pool; raise TransferError on failure."""

    @abstractmethod
    def _close(self) -> None:
        """Release everything the transport holds; idempotent."""

    def register(self, kv_cache: KVCache) -> PoolDescriptor:
        """Register the local pool (once per transport) and return its descriptor."""
        if self._pool is not None:
            raise TransferError(f"{self.name}: a pool is already registered")
        self._descriptor = self._register(kv_cache, PoolLayout.of(kv_cache))
        self._pool = kv_cache
        return self._descriptor

    def describe(self) -> PoolDescriptor:
        """The registered pool's descriptor, for peers."""
        if self._descriptor is None:
            raise TransferError(f"{self.name}: no pool registered")
        return self._descriptor

    @property
    def pool(self) -> KVCache:
        if self._pool is None:
            raise TransferError(f"{self.name}: no pool registered")
        return self._pool

    def start_read(
        self, peer: PoolDescriptor, remote_blocks: Sequence[int], local_blocks: Sequence[int]
    ) -> Transfer:
        """Start copying the peer's `remote_blocks` into local `local_blocks` (same length,
        position for position; any order, duplicates refused). Returns at once."""
        local = self.describe()
        if peer.transport != self.name:
            raise LayoutMismatchError(f"peer pool is {peer.transport!r}, this is {self.name!r}")
        local.layout.check_compatible(peer.layout)
        remote, dest = tuple(remote_blocks), tuple(local_blocks)
        if len(remote) != len(dest):
            raise LayoutMismatchError(f"{len(remote)} remote blocks for {len(dest)} local ones")
        _check_block_ids(remote, peer.layout.num_blocks, "remote")
        _check_block_ids(dest, local.layout.num_blocks, "local")
        if len(set(dest)) != len(dest):
            raise LayoutMismatchError("local blocks repeat: two reads would land in one block")
        transfer = Transfer(peer, remote, dest, len(remote) * local.layout.bytes_per_block)
        self._start(transfer)
        return transfer

    def poll(self, transfer: Transfer) -> bool:
        """True once the blocks are in place; never blocks for long. Raises TransferError."""
        if not transfer.done:
            transfer.done = self._progress(transfer)
        return transfer.done

    def wait(self, transfer: Transfer, timeout_s: float) -> None:
        """Block until `transfer` is done; TransferTimeoutError after `timeout_s` seconds."""
        deadline = time.monotonic() + timeout_s
        while not self.poll(transfer):
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise TransferTimeoutError(
                    f"{self.name}: {len(transfer.remote_blocks)} blocks from "
                    f"{transfer.peer.owner} not done after {timeout_s} s"
                )
            self._block(transfer, remaining_s)

    def _block(self, transfer: Transfer, timeout_s: float) -> None:
        """Sleep until `transfer` may have progressed (at most `timeout_s`). Transports whose
        reads run on a thread wait on its future instead of this short nap."""
        time.sleep(min(timeout_s, 0.0002))

    def read(
        self,
        peer: PoolDescriptor,
        remote_blocks: Sequence[int],
        local_blocks: Sequence[int],
        timeout_s: float,
    ) -> None:
        """`start_read` then `wait`: the blocking form."""
        self.wait(self.start_read(peer, remote_blocks, local_blocks), timeout_s)

    def close(self) -> None:
        """Unregister the pool and release the transport's resources; safe to call twice."""
        self._close()
        self._pool = None
        self._descriptor = None

    def __enter__(self) -> KVTransport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_block_ids(blocks: tuple[int, ...], num_blocks: int, side: str) -> None:
    for block in blocks:
        if not 0 <= block < num_blocks:
            raise LayoutMismatchError(f"{side} block {block} outside 0..{num_blocks - 1}")


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (an exited, unreaped child still counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, owned by another user
    return True


def contiguous_runs(
    remote_blocks: Sequence[int], local_blocks: Sequence[int]
) -> list[tuple[int, int, int]]:
    """Split a block mapping into runs `(remote_start, local_start, length)` consecutive on both
    sides, so that a copy moves each run as one slice instead of block by block."""
    runs: list[tuple[int, int, int]] = []
    for remote, local in zip(remote_blocks, local_blocks, strict=True):
        if runs:
            start_remote, start_local, length = runs[-1]
            if remote == start_remote + length and local == start_local + length:
                runs[-1] = (start_remote, start_local, length + 1)
                continue
        runs.append((remote, local, 1))
    return runs


def stacked_view(kv_cache: KVCache) -> torch.Tensor | None:
    """The whole pool as one [2 * num_layers, num_blocks, elements per layer block] view, when
    its tensors lie end to end in one buffer in `KVCache(storage=...)` order; else None. One copy
    over it moves a run of blocks in every layer at once."""
    tensors = [
        t for pair in zip(kv_cache.key_caches, kv_cache.value_caches, strict=True) for t in pair
    ]
    first = tensors[0]
    step = first.numel() * first.element_size()
    for index, tensor in enumerate(tensors):
        if tensor.data_ptr() != first.data_ptr() + index * step or not tensor.is_contiguous():
            return None
    shape = (len(tensors), first.shape[0], first[0].numel())
    return first.as_strided(shape, (first.numel(), first[0].numel(), 1))


KV_TRANSPORTS: Registry[type[KVTransport]] = Registry("KV transport")
