"""`peer-dist`: a running peer's published weights over torch.distributed, for a new instance on
another node (DESIGN.md §7, §10.2), where its /dev/shm segment (`peer`) cannot be mapped.

The publisher serves its segment (`WeightServer`): a TCPStore on its node's address
(`torch_dist.node_address`) and an accept thread, as `torch-dist`'s owner does. A reader joins
once (rank 1 of a two-rank gloo group; the serving thread builds rank 0), posts its receive into
a buffer of its own, then asks; the serving thread sends the whole segment as one message. The
reader checks names, shapes and dtypes against its model before it joins and the xxh3 digests
after the bytes arrive, and builds the model over its buffer as `peer` does over the mapping.
Every store and group operation is bounded by `timeout_s`; a peer that never answers, dies
mid-copy or sends other bytes fails the load, and `load_weights` falls back to disk.

The bytes travel over gloo on both CPU and CUDA (the segment is host memory on both ends); a CUDA
instance copies its verified buffer to the device, as `peer` does.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from hyperflexis.engine.config import ModelConfig
from hyperflexis.engine.model import CausalLM
from hyperflexis.transfer.shm import tensor_over
from hyperflexis.transfer.torch_dist import (
    CLOSE,
    as_error,
    host_store,
    pair_group,
    store_client,
    wait_key,
)
from hyperflexis.transfer.weights import (
    WEIGHT_SOURCES,
    WeightManifest,
    WeightSource,
    WeightSourceError,
    _map_segment,
    _verify_digests,
    checked_config,
    model_over,
)

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 30.0  # bound on each rendezvous, store and group operation of one load
HOST = torch.device("cpu")


def _request(store: dist.TCPStore, index: int) -> None:
    """Ask the serving thread of link `index` to send (the receive is already posted)."""
    store.set(f"link/{index}/req", "send")


def receive_segment(manifest: WeightManifest, timeout_s: float) -> torch.Tensor:
    """The publisher's segment, received over a gloo group into a new host buffer."""
    if manifest.dist_address is None:
        raise WeightSourceError("the peer serves no weights over torch.distributed")
    host, port = manifest.dist_address
    buffer = torch.empty(max(manifest.num_bytes, 1), dtype=torch.uint8)
    try:
        store = store_client(manifest.dist_address, timeout_s)
        index = store.add("num_links", 1) - 1
        store.set(f"join/{index}", "join")
        group = pair_group(dist.PrefixStore(f"link/{index}/", store), 1, HOST, timeout_s)
        work = group.recv([buffer], 0, 0)  # posted before the request is visible
        _request(store, index)
        work.wait()
    except RuntimeError as exc:  # dist.DistError included
        raise WeightSourceError(str(as_error(exc, f"weights from {host}:{port}"))) from exc
    return buffer


@WEIGHT_SOURCES.register
class PeerDistSource(WeightSource):
    """A running peer's published segment, received over torch.distributed (`manifest`; None
    when no peer published one)."""

    name = "peer-dist"

    def __init__(
        self, manifest: WeightManifest | None, timeout_s: float = DEFAULT_TIMEOUT_S
    ) -> None:
        self.manifest = manifest
        self.timeout_s = timeout_s

    def load(
        self, folder: Path, dtype: torch.dtype, device: torch.device
    ) -> tuple[ModelConfig, CausalLM, dict[str, float]]:
        manifest = self.manifest
        if manifest is None:
            raise WeightSourceError("no peer has published its weights")
        phases: dict[str, float] = {}
        start = time.perf_counter()
        config = checked_config(folder, dtype, manifest)  # before a byte moves
        buffer = receive_segment(manifest, self.timeout_s)
        phases["recv_s"] = time.perf_counter() - start
        start = time.perf_counter()
        _verify_digests(manifest, buffer)
        phases["verify_s"] = time.perf_counter() - start
        return config, model_over(config, dtype, device, manifest, buffer, phases), phases


class WeightServer:
    """Serves a published segment (`manifest`) to `peer-dist` readers until `close`; `address`
    is where they connect. One thread per reader, each sending the segment once."""

    def __init__(self, manifest: WeightManifest, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.manifest = manifest
        self.timeout_s = timeout_s
        self._master, self.address = host_store(timeout_s)
        self._closing = threading.Event()
        self._lock = threading.Lock()
        self._next_index = 0  # the join key the accept thread waits on
        self._pending: dict[int, threading.Thread] = {}  # serving threads by link
        # Daemon threads: a backstop so that a wedged link can never hold up interpreter exit.
        self._accept = threading.Thread(
            target=self._accept_links, name=f"weights-dist-{self.address[1]}", daemon=True
        )
        self._accept.start()

    def _accept_links(self) -> None:
        store = store_client(self.address, self.timeout_s)
        while wait_key(store, f"join/{self._next_index}", self._closing) not in (
            None,
            CLOSE.encode(),
        ):
            with self._lock:
                index = self._next_index
                thread = threading.Thread(
                    target=self._send, args=(index,), name=f"weights-dist-link{index}", daemon=True
                )
                self._pending[index] = thread
                self._next_index += 1
            thread.start()

    def _send(self, index: int) -> None:
        try:
            store = store_client(self.address, self.timeout_s)
            prefix = dist.PrefixStore(f"link/{index}/", store)
            group = pair_group(prefix, 0, HOST, self.timeout_s)
            if wait_key(store, f"link/{index}/req", self._closing) in (None, CLOSE.encode()):
                return
            segment = tensor_over(_map_segment(self.manifest))
            group.send([segment], 1, 0).wait()
        except (RuntimeError, WeightSourceError) as exc:  # the reader went away
            logger.info("weights-dist link %d ended: %s", index, exc)
        finally:
            with self._lock:
                self._pending.pop(index, None)

    def close(self) -> None:
        """Stop serving: the accept thread and any serving thread still waiting end at once."""
        if self._closing.is_set():
            return
        self._closing.set()
        with self._lock:
            index, pending = self._next_index, dict(self._pending)
        for key in (index, index + 1):  # the accept thread may be one key further
            self._master.set(f"join/{key}", CLOSE)
        for link in pending:
            self._master.set(f"link/{link}/req", CLOSE)
        for thread in (self._accept, *pending.values()):
            thread.join(self.timeout_s)
