"""`nixl`: KV blocks over NVIDIA NIXL's UCX backend, one-sided READs from the peer's registered
memory (host memory on CPU). Optional: it needs the `nixl` extra (`nixl-cu12`, installed with
`--no-deps` so that it never replaces the pinned torch); without it `NixlTransport()` raises.

UCX is kept on this host: shared memory and loopback transports only (`sm,self`), device `lo`,
and agents exchange metadata through the descriptor, never through NIXL's listener thread, so
the transport opens no socket at all. UCX's error handling is "none" because its "peer" mode needs
a transport with a peer-failure handler (TCP), and shared memory has none; a vanished peer still
surfaces, as a disconnect error on the next read. On host memory UCX reads with `cma`
(`process_vm_readv`) inside the post, so a read is done when `start_read` returns and holds the
caller for its length (about 7 GB/s here, against shm's memcpy speed); no progress thread, which
would spin a quarter of a core per instance.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import secrets
from types import ModuleType
from typing import Any

import numpy as np
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
)

UCX_ENVIRONMENT = {"UCX_TLS": "sm,self", "UCX_NET_DEVICES": "lo"}


def load_nixl() -> ModuleType | None:
    """The NIXL Python API (`nixl_cu12`, or `nixl` from the meta package), or None."""
    for module in ("nixl_cu12", "nixl"):
        try:
            return importlib.import_module(module)
        except ImportError:
            continue
    return None


def _block_descriptors(
    bases: tuple[tuple[int, int], ...], runs: list[tuple[int, int]], bytes_per_layer_block: int
) -> np.ndarray:
    """(address, length, device) rows: for each layer, keys then values, one row per run of
    consecutive blocks. `runs` holds (first block, number of blocks)."""
    rows = [
        (base + start * bytes_per_layer_block, length * bytes_per_layer_block, 0)
        for pair in bases
        for base in pair
        for start, length in runs
    ]
    return np.array(rows, dtype=np.uint64).reshape(-1, 3)


def _check_alive(peer: PoolDescriptor) -> None:
    """UCX is on shared memory here, so the owner runs on this host: check its process. (An owner
    that closed its pool but still runs is not detected: the lease protocol rules that out.)"""
    if not process_alive(peer.owner_pid):
        raise PeerGoneError(f"nixl: the owner of {peer.owner} (pid {peer.owner_pid}) exited")


@KV_TRANSPORTS.register
class NixlTransport(KVTransport):
    """One NIXL agent per transport; a read is one NIXL READ request of every run, layer and
    key/value, polled with `check_xfer_state`."""

    name = "nixl"

    def __init__(self) -> None:
        super().__init__()
        module = load_nixl()
        if module is None:
            raise TransferError("nixl is not installed: pip install --no-deps nixl-cu12")
        self._nixl = module
        self._agent: Any = None
        self._registered: Any = None
        self._bases: tuple[tuple[int, int], ...] = ()
        self._peers: dict[str, Any] = {}  # pool owner -> remote agent name, as NIXL returned it

    def allocate(self, num_bytes: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(num_bytes, dtype=torch.uint8, device=device)

    def _register(self, kv_cache: KVCache, layout: PoolLayout) -> PoolDescriptor:
        if kv_cache.key_caches[0].device.type != "cpu":
            raise TransferError("nixl: only host-memory pools are wired up (VRAM needs a GPU)")
        os.environ.update(UCX_ENVIRONMENT)  # UCX reads them when the backend is created
        name = f"hyperflexis-kv-{os.getpid()}-{secrets.token_hex(4)}"
        config = self._nixl.nixl_agent_config(
            enable_prog_thread=False, enable_listen_thread=False, backends=[]
        )
        try:
            self._agent = self._nixl.nixl_agent(name, config)
            self._agent.create_backend("UCX", {"ucx_error_handling_mode": "none"})
            tensors = [
                t
                for pair in zip(kv_cache.key_caches, kv_cache.value_caches, strict=True)
                for t in pair
            ]
            self._registered = self._agent.register_memory(tensors)
        except Exception as exc:  # NIXL raises its own binding errors, not a common base
            raise TransferError(f"nixl: setting up agent {name} failed: {exc}") from exc
        self._bases = tuple(
            (k.data_ptr(), v.data_ptr())
            for k, v in zip(kv_cache.key_caches, kv_cache.value_caches, strict=True)
        )
        handle = (self._agent.get_agent_metadata(), self._bases)
        return PoolDescriptor(self.name, name, os.getpid(), layout, handle)

    def _remote(self, peer: PoolDescriptor) -> Any:
        remote = self._peers.get(peer.owner)
        if remote is None:
            metadata, _ = peer.handle
            try:
                remote = self._agent.add_remote_agent(metadata)
            except Exception as exc:
                raise PeerGoneError(f"nixl: loading {peer.owner}'s metadata failed: {exc}") from exc
            self._peers[peer.owner] = remote
        return remote

    def _start(self, transfer: Transfer) -> None:
        _check_alive(transfer.peer)
        remote = self._remote(transfer.peer)
        runs = contiguous_runs(transfer.remote_blocks, transfer.local_blocks)
        layer_block = transfer.peer.layout.bytes_per_layer_block
        _, remote_bases = transfer.peer.handle
        local_rows = _block_descriptors(
            self._bases, [(dest, n) for _, dest, n in runs], layer_block
        )
        remote_rows = _block_descriptors(remote_bases, [(r, n) for r, _, n in runs], layer_block)
        agent = self._agent
        try:
            request = agent.initialize_xfer(
                "READ",
                agent.get_xfer_descs(local_rows, "DRAM"),
                agent.get_xfer_descs(remote_rows, "DRAM"),
                remote,
            )
            status = agent.transfer(request)
        except Exception as exc:
            self._forget(transfer.peer.owner)
            raise PeerGoneError(f"nixl: reading from {transfer.peer.owner} failed: {exc}") from exc
        if status == "ERR":
            request.release()
            raise PeerGoneError(f"nixl: posting the read from {transfer.peer.owner} failed")
        transfer.state = request

    def _progress(self, transfer: Transfer) -> bool:
        request = transfer.state
        try:
            status = self._agent.check_xfer_state(request)
        except Exception as exc:
            status = f"ERR ({exc})"
        if status == "PROC":
            return False
        request.release()
        if status != "DONE":
            raise PeerGoneError(f"nixl: the read from {transfer.peer.owner} failed: {status}")
        _check_alive(transfer.peer)  # an owner that exited mid-read leaves bytes not to trust
        return True

    def _forget(self, owner: str) -> None:
        remote = self._peers.pop(owner, None)
        if remote is not None:
            with contextlib.suppress(Exception):  # already disconnected: nothing left to drop
                self._agent.remove_remote_agent(remote)

    def disconnect(self, peer: PoolDescriptor) -> None:
        """Drop `peer`'s metadata and connection."""
        self._forget(peer.owner)

    def _close(self) -> None:
        for owner in list(self._peers):
            self._forget(owner)
        if self._agent is not None and self._registered is not None:
            self._agent.deregister_memory(self._registered)
        self._registered = None
        self._agent = None
