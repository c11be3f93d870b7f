"""An instance's weight loader (`InstanceWeights`, `ModelRunner`'s `load`): which sources it tries
(transfer/weights.py, transfer/weights_dist.py) and, when it publishes, its segment and the
server that hands the segment to peers on other nodes."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from hyperflexis.engine.config import ModelConfig
from hyperflexis.transfer.per_link import node_name
from hyperflexis.transfer.weights import (
    WEIGHT_SOURCES,
    DiskSource,
    LoadedWeights,
    PeerSource,
    PublishedWeights,
    WeightManifest,
    WeightSource,
    load_weights,
)
from hyperflexis.transfer.weights_dist import PeerDistSource, WeightServer


def peer_sources(weight_source: str, peer: WeightManifest | None) -> list[WeightSource]:
    """The sources `weight_source` names, in order, disk last: "disk" alone; "peer" maps the
    peer's segment; "peer-dist" receives it over torch.distributed, except from a publisher on
    this node (`per_link.node_name`), whose segment is mapped ("peer") instead."""
    WEIGHT_SOURCES.get(weight_source)  # unknown names fail here, before any loading
    if weight_source == PeerDistSource.name and (peer is None or peer.node != node_name()):
        return [PeerDistSource(peer), DiskSource()]
    if weight_source in (PeerSource.name, PeerDistSource.name):
        return [PeerSource(peer), DiskSource()]
    return [DiskSource()]


class InstanceWeights:
    """An instance's weight loader: the sources `peer_sources` picks for `weight_source`.
    Remembers what served (`loaded`) and how long the whole load took (`load_s`, fallbacks
    included).

    `publish`: also publish the weights for peers (`published`), serve them over
    torch.distributed (`server`, for peers on other nodes), and run on the published segment
    itself (the loaded copy is freed), so the host keeps one copy however many instances map
    it. `close` stops serving and unlinks the segment (peers that mapped it keep their pages)."""

    def __init__(
        self, weight_source: str, peer: WeightManifest | None = None, publish: bool = False
    ) -> None:
        self.sources = peer_sources(weight_source, peer)
        self.publish = publish
        self.loaded: LoadedWeights | None = None
        self.published: PublishedWeights | None = None
        self.server: WeightServer | None = None
        self.load_s = 0.0

    def __call__(
        self, folder: Path, dtype: torch.dtype, device: torch.device
    ) -> tuple[ModelConfig, torch.nn.Module]:
        start = time.perf_counter()
        loaded = load_weights(folder, dtype, device, self.sources)
        self.load_s = time.perf_counter() - start
        if self.publish:
            self.published = PublishedWeights(loaded.model)
            self.server = WeightServer(self.published.manifest)
            if device.type == "cpu":
                _, model, _ = PeerSource(self.published.manifest).load(folder, dtype, device)
                loaded = dataclasses.replace(loaded, model=model)
        self.loaded = loaded
        return loaded.config, loaded.model

    @property
    def manifest(self) -> WeightManifest | None:
        """The published segment's manifest, with this node and the server's address."""
        if self.published is None:
            return None
        address = None if self.server is None else self.server.address
        return dataclasses.replace(self.published.manifest, node=node_name(), dist_address=address)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        if self.published is not None:
            self.published.close()


def weight_origin(weights: InstanceWeights) -> dict[str, Any]:
    """`InstanceReady`'s weight fields: the source that served, what failed first, and the
    published segment's manifest."""
    loaded = weights.loaded
    return {
        "weight_source": "" if loaded is None else loaded.source,
        "weight_failures": () if loaded is None else loaded.failures,
        "weights_manifest": weights.manifest,
    }
