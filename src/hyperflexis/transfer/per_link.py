"""`auto`: the KV transport chosen per link. An instance's pool is registered twice, with `shm`
(its memory is the shm segment, so a peer on the same node maps it) and with `torch-dist` (a
peer on another node joins a gloo or NCCL group to it). A reader compares the owner's node with
its own (`node_name`: the backend's node id, else the host name) and reads over `shm` when they
match, `torch-dist` otherwise (DESIGN.md §10.2). A CUDA pool registers with `torch-dist` only.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import torch

from hyperflexis.engine.kv_cache import KVCache
from hyperflexis.transfer.base import (
    KV_TRANSPORTS,
    KVTransport,
    LayoutMismatchError,
    PoolDescriptor,
    PoolLayout,
    Transfer,
)
from hyperflexis.transfer.shm import ShmTransport
from hyperflexis.transfer.torch_dist import TorchDistTransport

NODE_ENV = "HYPERFLEXIS_NODE"  # a multi-node backend sets its instances' node id


def node_name() -> str:
    """This process's node: the backend's id for it (`NODE_ENV`), else the host name."""
    return os.environ.get(NODE_ENV) or socket.gethostname()


@dataclass(frozen=True, slots=True)
class PerLinkHandle:
    """What an `auto` pool's descriptor carries: its node and one descriptor per transport."""

    node: str
    shm: PoolDescriptor | None  # None for a CUDA pool
    torch_dist: PoolDescriptor


def link_transport(reader: PoolDescriptor, owner: PoolDescriptor) -> str:
    """The transport a read from `owner` into `reader`'s pool takes: the registry name."""
    if reader.transport != PerLinkTransport.name or owner.transport != PerLinkTransport.name:
        return owner.transport  # one fixed transport for every link
    mine, theirs = reader.handle, owner.handle
    assert isinstance(mine, PerLinkHandle) and isinstance(theirs, PerLinkHandle)
    same = mine.node == theirs.node and mine.shm is not None and theirs.shm is not None
    return ShmTransport.name if same else TorchDistTransport.name


@KV_TRANSPORTS.register
class PerLinkTransport(KVTransport):
    """`shm` to peers on this node, `torch-dist` to the others; see the module docstring."""

    name = "auto"

    def __init__(self) -> None:
        super().__init__()
        self._shm: ShmTransport | None = None
        self._dist = TorchDistTransport()

    def allocate(self, num_bytes: int, device: torch.device) -> torch.Tensor:
        if device.type != "cpu":
            return self._dist.allocate(num_bytes, device)
        self._shm = ShmTransport()
        return self._shm.allocate(num_bytes, device)

    def _register(self, kv_cache: KVCache, layout: PoolLayout) -> PoolDescriptor:
        shm = None if self._shm is None else self._shm.register(kv_cache)
        dist = self._dist.register(kv_cache)
        handle = PerLinkHandle(node_name(), shm, dist)
        return PoolDescriptor(self.name, dist.owner, os.getpid(), layout, handle)

    def _inner(self, peer: PoolDescriptor) -> tuple[KVTransport, PoolDescriptor]:
        theirs = peer.handle
        if not isinstance(theirs, PerLinkHandle):
            raise LayoutMismatchError(f"auto: {peer.owner} is not an auto pool")
        if link_transport(self.describe(), peer) == ShmTransport.name:
            assert self._shm is not None and theirs.shm is not None
            return self._shm, theirs.shm
        return self._dist, theirs.torch_dist

    def _start(self, transfer: Transfer) -> None:
        inner, peer = self._inner(transfer.peer)
        state = inner.start_read(peer, transfer.remote_blocks, transfer.local_blocks)
        transfer.state = (inner, state)

    def _progress(self, transfer: Transfer) -> bool:
        inner, state = transfer.state
        assert isinstance(inner, KVTransport) and isinstance(state, Transfer)
        return inner.poll(state)

    def _block(self, transfer: Transfer, timeout_s: float) -> None:
        inner, state = transfer.state
        inner._block(state, timeout_s)

    def disconnect(self, peer: PoolDescriptor) -> None:
        """End the link to `peer` on whichever transport it took."""
        inner, theirs = self._inner(peer)
        disconnect = getattr(inner, "disconnect", None)
        if disconnect is not None:
            disconnect(theirs)

    def _close(self) -> None:
        self._dist.close()
        if self._shm is not None:
            self._shm.close()
