"""`shm`: the default same-host KV transport. The pool lives in a POSIX shared-memory file under
/dev/shm that the owner's KV tensors are views of; a reader maps it read-only and copies whole
blocks out, a one-sided read at memcpy speed (the CPU analogue of CUDA IPC).

Files, not `multiprocessing.shared_memory`: on Python < 3.13 attaching registers the segment with
the reader's resource tracker, which unlinks the owner's pool when the reader exits. Here only the
owner unlinks (on close, or when it is garbage collected or exits); a killed owner's file is
removed by `unlink_segments_of`, which the process that reaps instances calls
(`backends.local.InstancePool`), or by a sweep of every dead owner's (`unlink_orphaned_segments`).
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import warnings
import weakref
from collections.abc import Sequence
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import torch

from hyperflexis.engine.kv_cache import KVCache
from hyperflexis.transfer.base import (
    KV_TRANSPORTS,
    KVTransport,
    PeerGoneError,
    PoolDescriptor,
    PoolLayout,
    Transfer,
    TransferError,
    contiguous_runs,
    process_alive,
    stacked_view,
)

SHM_DIR = Path("/dev/shm")
SEGMENT_PREFIX = "hyperflexis-kv-"  # then "<owner pid>-<random hex>"
# Reads up to this size copy inline in `start_read` (a few ms at memcpy speed, less than waking
# the copy thread costs on a busy host); larger ones run on the copy thread while the loop steps.
INLINE_COPY_BYTES = 32 << 20


@dataclass(frozen=True, slots=True)
class ShmHandle:
    """Where a pool's tensors sit in its segment."""

    path: str  # the segment file
    num_bytes: int  # its size
    inode: int  # tells a recreated file of the same name from the registered one
    offsets: tuple[tuple[int, int], ...]  # per layer, (key, value) byte offsets into the file


@dataclass(slots=True)
class _Mapping:
    """A peer's segment mapped read-only, with its layers as tensors."""

    memory: mmap.mmap
    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    stacked: torch.Tensor | None  # all layers as one view, when laid out as KVCache(storage=)


def _unlink(path: Path) -> None:
    path.unlink(missing_ok=True)


def unlink_segments_of(
    pid: int, prefixes: Sequence[str] = (SEGMENT_PREFIX,), directory: Path = SHM_DIR
) -> list[Path]:
    """Remove the segments named `prefix<pid>-...` of a process known to be dead (a killed owner
    cannot unlink its own; mappings others hold stay valid). Returns what was removed."""
    removed = []
    for prefix in prefixes:
        for path in directory.glob(f"{prefix}{pid}-*"):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def unlink_orphaned_segments(directory: Path = SHM_DIR, prefix: str = SEGMENT_PREFIX) -> list[Path]:
    """Remove the segments named `prefix<pid>-...` (KV pools by default, weights with
    `weights.WEIGHT_SEGMENT_PREFIX`) whose owners no longer run; returns what was removed."""
    removed = []
    for path in directory.glob(f"{prefix}*"):
        pid_text = path.name.removeprefix(prefix).split("-", 1)[0]
        if pid_text.isdigit() and not process_alive(int(pid_text)):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def tensor_over(memory: mmap.mmap) -> torch.Tensor:
    with warnings.catch_warnings():
        # A read-only mapping: torch warns that the buffer is not writable. Nothing writes to a
        # peer's views (a write would fault, which is the point of mapping it read-only).
        warnings.filterwarnings("ignore", message=".*not writable.*")
        return torch.frombuffer(memory, dtype=torch.uint8)


def _map_layers(memory: mmap.mmap, handle: ShmHandle, layout: PoolLayout) -> _Mapping:
    base = tensor_over(memory)
    layer_bytes = layout.num_blocks * layout.bytes_per_layer_block

    def view(offset: int) -> torch.Tensor:
        chunk = base[offset : offset + layer_bytes]
        return chunk.view(layout.torch_dtype).view(layout.layer_shape)

    keys = [view(k) for k, _ in handle.offsets]
    values = [view(v) for _, v in handle.offsets]
    stacked = None
    end_to_end = tuple((2 * i * layer_bytes, (2 * i + 1) * layer_bytes) for i in range(len(keys)))
    if handle.offsets == end_to_end:
        num_tensors = 2 * len(keys)
        stacked = base[: num_tensors * layer_bytes].view(layout.torch_dtype)
        stacked = stacked.view(num_tensors, layout.num_blocks, -1)
    return _Mapping(memory, keys, values, stacked)


@KV_TRANSPORTS.register
class ShmTransport(KVTransport):
    """Same-host transport over a /dev/shm segment per pool; reads run on one copy thread so the
    engine loop keeps stepping while blocks move (torch releases the GIL inside `copy_`)."""

    name = "shm"

    def __init__(self, directory: Path = SHM_DIR) -> None:
        super().__init__()
        self._directory = directory
        self._path: Path | None = None
        self._memory: mmap.mmap | None = None
        self._storage: torch.Tensor | None = None
        self._finalizer: weakref.finalize | None = None
        self._mappings: dict[str, _Mapping] = {}
        self._executor: ThreadPoolExecutor | None = None
        self._stacked: torch.Tensor | None = None  # the local pool as one view, if it is one

    def allocate(self, num_bytes: int, device: torch.device) -> torch.Tensor:
        if device.type != "cpu":
            raise TransferError(f"shm places pools in host memory, not on {device}")
        if self._storage is not None:
            raise TransferError("shm: this transport already allocated its pool")
        if num_bytes < 1:
            raise ValueError(f"num_bytes must be >= 1, got {num_bytes}")
        path = self._directory / f"{SEGMENT_PREFIX}{os.getpid()}-{secrets.token_hex(6)}"
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
        # Unlinked when this transport is closed or collected, or the interpreter exits.
        self._finalizer = weakref.finalize(self, _unlink, path)
        try:
            os.ftruncate(fd, num_bytes)  # a new file reads as zeros: no explicit fill needed
            self._memory = mmap.mmap(fd, num_bytes)
        finally:
            os.close(fd)
        self._path = path
        self._storage = torch.frombuffer(self._memory, dtype=torch.uint8)
        return self._storage

    def _register(self, kv_cache: KVCache, layout: PoolLayout) -> PoolDescriptor:
        if self._storage is None or self._path is None:
            raise TransferError("shm: allocate() the pool and build the KVCache on it first")
        base = self._storage.data_ptr()
        size = self._storage.numel()
        layer_bytes = layout.num_blocks * layout.bytes_per_layer_block
        offsets = []
        for keys, values in zip(kv_cache.key_caches, kv_cache.value_caches, strict=True):
            pair = (keys.data_ptr() - base, values.data_ptr() - base)
            if any(not 0 <= off <= size - layer_bytes for off in pair):
                raise TransferError("shm: the KVCache does not live in this transport's segment")
            offsets.append(pair)
        self._stacked = stacked_view(kv_cache)
        handle = ShmHandle(str(self._path), size, self._path.stat().st_ino, tuple(offsets))
        return PoolDescriptor(self.name, self._path.name, os.getpid(), layout, handle)

    def _check_peer(self, peer: PoolDescriptor) -> None:
        handle: ShmHandle = peer.handle
        try:
            inode = os.stat(handle.path).st_ino
        except FileNotFoundError:
            inode = None
        if inode != handle.inode:
            raise PeerGoneError(f"shm: pool {peer.owner} was closed (segment removed)")
        if not process_alive(peer.owner_pid):
            raise PeerGoneError(f"shm: the owner of {peer.owner} (pid {peer.owner_pid}) exited")

    def _mapping(self, peer: PoolDescriptor) -> _Mapping:
        mapping = self._mappings.get(peer.owner)
        if mapping is None:
            handle: ShmHandle = peer.handle
            try:
                fd = os.open(handle.path, os.O_RDONLY)
            except FileNotFoundError:
                raise PeerGoneError(f"shm: pool {peer.owner} was closed") from None
            try:
                if os.fstat(fd).st_ino != handle.inode:
                    raise PeerGoneError(f"shm: pool {peer.owner} was replaced")
                memory = mmap.mmap(fd, handle.num_bytes, prot=mmap.PROT_READ)
            finally:
                os.close(fd)
            mapping = self._mappings[peer.owner] = _map_layers(memory, handle, peer.layout)
        return mapping

    def _start(self, transfer: Transfer) -> None:
        self._check_peer(transfer.peer)
        mapping = self._mapping(transfer.peer)
        runs = contiguous_runs(transfer.remote_blocks, transfer.local_blocks)
        if transfer.num_bytes <= INLINE_COPY_BYTES:
            _copy_runs(mapping, self.pool, self._stacked, runs)
            transfer.state = None  # nothing in flight
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="kv-shm")
        transfer.state = self._executor.submit(_copy_runs, mapping, self.pool, self._stacked, runs)

    def _block(self, transfer: Transfer, timeout_s: float) -> None:
        if transfer.state is not None:
            futures.wait([transfer.state], timeout_s)

    def _progress(self, transfer: Transfer) -> bool:
        future: Future[None] | None = transfer.state
        if future is not None:
            if not future.done():
                return False
            future.result()  # re-raises a failed copy
        # The owner may have gone while the copy ran; the bytes are then not to be trusted.
        self._check_peer(transfer.peer)
        return True

    def disconnect(self, peer: PoolDescriptor) -> None:
        """Unmap a peer's segment (its next read maps it again)."""
        mapping = self._mappings.pop(peer.owner, None)
        if mapping is not None:
            _unmap(mapping)

    def _close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        for mapping in self._mappings.values():
            _unmap(mapping)
        self._mappings.clear()
        if self._finalizer is not None:
            self._finalizer()  # unlink now; the owner's KVCache views stay valid until freed
        self._storage = None
        self._stacked = None
        self._memory = None
        self._path = None


def _unmap(mapping: _Mapping) -> None:
    mapping.keys.clear()
    mapping.values.clear()
    mapping.stacked = None
    # BufferError: a caller still holds a view; the mapping goes when that view is freed.
    with contextlib.suppress(BufferError):
        mapping.memory.close()


def _copy_runs(
    mapping: _Mapping,
    pool: KVCache,
    local_stacked: torch.Tensor | None,
    runs: list[tuple[int, int, int]],
) -> None:
    if mapping.stacked is not None and local_stacked is not None:
        for remote_start, local_start, length in runs:  # one strided copy per run, all layers
            local_stacked[:, local_start : local_start + length].copy_(
                mapping.stacked[:, remote_start : remote_start + length]
            )
        return
    for layer in range(len(pool.key_caches)):
        for local, remote in (
            (pool.key_caches[layer], mapping.keys[layer]),
            (pool.value_caches[layer], mapping.values[layer]),
        ):
            for remote_start, local_start, length in runs:
                local[local_start : local_start + length].copy_(
                    remote[remote_start : remote_start + length]
                )
