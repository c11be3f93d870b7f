"""`torch-dist`: KV blocks over a persistent two-rank process group per link (gloo for CPU pools,
NCCL for CUDA ones), rendezvous through a TCPStore that the owner hosts on its node's address
(`node_address`: 127.0.0.1 unless a multi-node backend sets one).

The pull is made two-sided by a serving thread on the owner: a reader joins a link once (rank 1;
the owner's accept thread builds rank 0 of the same group), then posts each request's block ids
in the store and receives the blocks gathered into one message. Standalone groups (not
`init_process_group`) so one process can hold a link per peer. Every store and group operation
is bounded by `timeout_s`.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import threading
from concurrent import futures
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from hyperflexis.engine.kv_cache import KVCache
from hyperflexis.transfer.base import (
    KV_TRANSPORTS,
    KVTransport,
    PeerGoneError,
    PoolDescriptor,
    PoolLayout,
    Transfer,
    TransferError,
    TransferTimeoutError,
)

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
NODE_IP_ENV = "HYPERFLEXIS_NODE_IP"  # a multi-node backend sets its instances' node address
CLOSE = "close"  # written to the key a serving thread waits on, to end it at once
# A serving thread rechecks `closing` this often. Closing ends it at once (it writes CLOSE to the
# keys the thread may wait on next); the slice is a backstop, long because each expiry logs a
# c10d warning.
WAIT_SLICE = datetime.timedelta(seconds=300)


def node_address() -> str:
    """The address this process's links bind to: its node's (`NODE_IP_ENV`), else loopback."""
    return os.environ.get(NODE_IP_ENV) or LOOPBACK


def host_store(timeout_s: float) -> tuple[dist.TCPStore, tuple[str, int]]:
    """A master TCPStore on a free port of this node's address, and that address."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    host = node_address()
    listener.bind((host, 0))  # a free port, on that address only (TCPStore binds to all)
    listener.listen()
    port = listener.getsockname()[1]
    master = dist.TCPStore(
        host,
        port,
        is_master=True,
        wait_for_workers=False,
        timeout=datetime.timedelta(seconds=timeout_s),
        master_listen_fd=listener.detach(),  # the store owns and closes the socket
    )
    return master, (host, port)


def wait_key(store: dist.TCPStore, key: str, closing: threading.Event) -> bytes | None:
    """The key's value once set, or None when `closing` is set first."""
    while not closing.is_set():
        try:
            store.wait([key], WAIT_SLICE)
        except dist.DistStoreError:
            continue  # not set yet: recheck `closing`
        return store.get(key)
    return None


def store_client(address: tuple[str, int], timeout_s: float) -> dist.TCPStore:
    timeout = datetime.timedelta(seconds=timeout_s)
    return dist.TCPStore(address[0], address[1], is_master=False, timeout=timeout)


def pair_group(store: dist.Store, rank: int, device: torch.device, timeout_s: float) -> Any:
    """A two-rank group; `Any` because torch's stubs give the gloo and NCCL backends no
    send/recv."""
    timeout = datetime.timedelta(seconds=timeout_s)
    if device.type == "cuda":
        options = dist.ProcessGroupNCCL.Options()
        options._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, 2, options)
    # The private options class is the only way to pin gloo's device to loopback.
    options = dist.ProcessGroupGloo._Options()  # type: ignore[attr-defined]
    options._devices = [dist.ProcessGroupGloo.create_device(hostname=node_address())]
    options._timeout = timeout
    return dist.ProcessGroupGloo(store, rank, 2, options)


def as_error(exc: Exception, what: str) -> TransferError:
    text = str(exc)
    if "Timed out" in text or "timeout" in text.lower():
        return TransferTimeoutError(f"torch-dist: {what} timed out: {text}")
    return PeerGoneError(f"torch-dist: {what} failed, the peer is gone: {text}")


@dataclass(slots=True)
class _Link:
    """The reader's end of one link: its store client, group and request counter."""

    store: dist.TCPStore
    group: Any
    index: int  # the link's number on the owner
    executor: ThreadPoolExecutor  # waits for receives, which gloo completes only in wait()
    next_tag: int = 0


@dataclass(slots=True)
class _Served:
    """The owner's end of one link, served by one thread."""

    index: int
    thread: threading.Thread | None = None
    next_tag: int = 0  # the request key the thread waits on next


@KV_TRANSPORTS.register
class TorchDistTransport(KVTransport):
    """Send/recv over a gloo or NCCL group per link; see the module docstring for the protocol."""

    name = "torch-dist"

    def __init__(self, timeout_s: float = 30.0) -> None:
        super().__init__()
        self.timeout_s = timeout_s  # bound on every rendezvous, store and group operation
        self._master: dist.TCPStore | None = None
        self._port = 0
        self._address = (LOOPBACK, 0)
        self._closing = threading.Event()
        self._accept: threading.Thread | None = None
        self._served: list[_Served] = []
        self._links: dict[str, _Link] = {}
        self._lock = threading.Lock()

    def allocate(self, num_bytes: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(num_bytes, dtype=torch.uint8, device=device)

    def _register(self, kv_cache: KVCache, layout: PoolLayout) -> PoolDescriptor:
        self._master, self._address = host_store(self.timeout_s)
        host, self._port = self._address
        owner = f"torch-dist-{host}:{self._port}"
        # Daemon threads: a backstop so that a wedged link can never hold up interpreter exit.
        self._accept = threading.Thread(
            target=self._accept_links, name=f"{owner}-accept", daemon=True
        )
        self._accept.start()
        return PoolDescriptor(self.name, owner, os.getpid(), layout, self._address)

    # --- owner side -------------------------------------------------------------------------

    def _wait_key(self, store: dist.TCPStore, key: str) -> bytes | None:
        return wait_key(store, key, self._closing)

    def _accept_links(self) -> None:
        store = store_client(self._address, self.timeout_s)
        index = 0
        while self._wait_key(store, f"join/{index}") not in (None, CLOSE.encode()):
            served = _Served(index)
            with self._lock:
                self._served.append(served)
            served.thread = threading.Thread(
                target=self._serve,
                args=(served,),
                name=f"torch-dist-{self._port}-link{index}",
                daemon=True,
            )
            served.thread.start()
            index += 1

    def _serve(self, served: _Served) -> None:
        store = store_client(self._address, self.timeout_s)
        prefix = f"link/{served.index}/"
        try:
            group = pair_group(dist.PrefixStore(prefix, store), 0, self.pool_device, self.timeout_s)
        except RuntimeError as exc:
            logger.warning("torch-dist link %d failed to form: %s", served.index, exc)
            return
        while True:
            key = f"{prefix}req/{served.next_tag}"
            value = self._wait_key(store, key)
            if value is None or value == CLOSE.encode():
                return
            store.delete_key(key)
            blocks = torch.tensor([int(b) for b in value.split(b",")], dtype=torch.int64)
            try:
                group.send([self._gather(blocks)], 1, served.next_tag).wait()
            except RuntimeError as exc:  # the reader went away: end this link
                logger.info("torch-dist link %d ended: %s", served.index, exc)
                return
            served.next_tag += 1

    @property
    def pool_device(self) -> torch.device:
        return self.pool.key_caches[0].device

    def _gather(self, blocks: torch.Tensor) -> torch.Tensor:
        """The blocks of every layer, keys and values, as one [2 * num_layers, n, ...] tensor."""
        pool = self.pool
        blocks = blocks.to(self.pool_device)
        first = pool.key_caches[0]
        out = first.new_empty((2 * len(pool.key_caches), len(blocks), *first.shape[1:]))
        for layer, (keys, values) in enumerate(
            zip(pool.key_caches, pool.value_caches, strict=True)
        ):
            torch.index_select(keys, 0, blocks, out=out[2 * layer])
            torch.index_select(values, 0, blocks, out=out[2 * layer + 1])
        return out

    # --- reader side ------------------------------------------------------------------------

    def _link(self, peer: PoolDescriptor) -> _Link:
        link = self._links.get(peer.owner)
        if link is not None:
            return link
        try:
            store = store_client(peer.handle, self.timeout_s)
            index = store.add("num_links", 1) - 1
            store.set(f"join/{index}", "join")
            prefix = dist.PrefixStore(f"link/{index}/", store)
            group = pair_group(prefix, 1, self.pool_device, self.timeout_s)
        except (RuntimeError, dist.DistError) as exc:
            raise as_error(exc, f"joining {peer.owner}") from exc
        executor = ThreadPoolExecutor(1, thread_name_prefix=f"torch-dist-recv-{index}")
        link = self._links[peer.owner] = _Link(store, group, index, executor)
        return link

    def _start(self, transfer: Transfer) -> None:
        link = self._link(transfer.peer)
        tag = link.next_tag
        link.next_tag += 1
        first = self.pool.key_caches[0]
        num = len(transfer.remote_blocks)
        staging = first.new_empty((2 * len(self.pool.key_caches), num, *first.shape[1:]))
        try:
            work = link.group.recv([staging], 0, tag)  # posted before the request is visible
            ids = ",".join(map(str, transfer.remote_blocks))
            link.store.set(f"link/{link.index}/req/{tag}", ids)
        except (RuntimeError, dist.DistError) as exc:
            raise as_error(exc, f"requesting blocks from {transfer.peer.owner}") from exc
        local = torch.tensor(transfer.local_blocks, dtype=torch.int64, device=first.device)
        transfer.state = link.executor.submit(_finish_recv, work, staging, local, self.pool)

    def _block(self, transfer: Transfer, timeout_s: float) -> None:
        futures.wait([transfer.state], timeout_s)

    def _progress(self, transfer: Transfer) -> bool:
        future: Future[None] = transfer.state
        if not future.done():
            return False
        try:
            future.result()
        except RuntimeError as exc:
            self._drop_link(transfer.peer.owner)
            raise as_error(exc, f"receiving from {transfer.peer.owner}") from exc
        return True

    def _drop_link(self, owner: str) -> None:
        link = self._links.pop(owner, None)
        if link is not None:
            link.executor.shutdown(wait=True)

    def disconnect(self, peer: PoolDescriptor) -> None:
        """End the link to `peer`: its serving thread on the owner stops."""
        self._end_link(peer.owner)

    def _end_link(self, owner: str) -> None:
        link = self._links.get(owner)
        if link is not None:
            with contextlib.suppress(RuntimeError, dist.DistError):  # the owner may be gone
                link.store.set(f"link/{link.index}/req/{link.next_tag}", CLOSE)
            self._drop_link(owner)

    def _close(self) -> None:
        for owner in list(self._links):
            self._end_link(owner)
        self._closing.set()
        if self._master is not None:
            with self._lock:
                served = list(self._served)
            # The threads may be one key further than their counters say: close both keys.
            for index in (len(served), len(served) + 1):
                self._master.set(f"join/{index}", CLOSE)
            for link in served:
                for tag in (link.next_tag, link.next_tag + 1):
                    self._master.set(f"link/{link.index}/req/{tag}", CLOSE)
        threads = [self._accept, *(s.thread for s in self._served)]
        for thread in threads:
            if thread is not None:
                thread.join(self.timeout_s)
        self._served.clear()
        self._accept = None
        self._master = None


def _finish_recv(
    work: dist.Work, staging: torch.Tensor, local_blocks: torch.Tensor, pool: KVCache
) -> None:
    """Wait for the blocks (bounded by the group's timeout), then scatter them into the pool."""
    work.wait()
    for layer, (keys, values) in enumerate(zip(pool.key_caches, pool.value_caches, strict=True)):
        keys.index_copy_(0, local_blocks, staging[2 * layer])
        values.index_copy_(0, local_blocks, staging[2 * layer + 1])
