"""How long a new instance takes to serve, by where its weights come from (DESIGN.md §7).

A live peer with the same model lends its weights device-to-device (NVLink/HCCS), else they come
from disk; either way the process then needs a fixed initialisation (allocator, KV cache, graph
capture), which no weight source saves.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from hyperflexis.cluster.scaler.decision import InstanceView, WeightSource
from hyperflexis.perf.specs import HardwareSpec, ModelSpec


@dataclass(frozen=True, slots=True)
class StartupPlan:
    """Where a new instance gets its weights and how long it takes to serve."""

    weight_source: WeightSource  # peer: device-to-device from a live instance; disk: safetensors
    peer_id: str | None  # the live instance copied from; None from disk
    weight_load_s: float  # predicted seconds to get the weights in place
    startup_s: float  # weight_load_s plus the fixed initialisation


class StartupModel:
    """Predicts start-up times from the hardware spec's bandwidths and the model's size."""

    def __init__(self, hardware: HardwareSpec, model: ModelSpec, init_s: float = 3.0) -> None:
        if init_s < 0:
            raise ValueError(f"invalid 'init_s': must be >= 0, got {init_s}")
        self.hardware = hardware
        self.model = model
        self.init_s = init_s  # fixed start-up work besides loading weights

    def weight_load_s(self, source: WeightSource) -> float:
        # Each accelerator loads its own shard, all in parallel.
        bandwidth = (
            self.hardware.d2d_weight_bandwidth_bytes_s
            if source == "peer"
            else self.hardware.disk_bandwidth_bytes_s
        )
        return self.model.weight_bytes_per_gpu / bandwidth

    def plan(self, instances: Iterable[InstanceView]) -> StartupPlan:
        """Copy from the least busy live instance of the same model, else load from disk."""
        peers = [i for i in instances if i.is_live and i.model == self.model.name]
        if not peers:
            load_s = self.weight_load_s("disk")
            return StartupPlan("disk", None, load_s, load_s + self.init_s)
        # A draining peer is leaving: prefer active ones, then the least loaded.
        peer = min(
            peers,
            key=lambda i: (
                i.state != "active",
                i.snapshot.num_running if i.snapshot else 0,
                i.instance_id,
            ),
        )
        load_s = self.weight_load_s("peer")
        return StartupPlan("peer", peer.instance_id, load_s, load_s + self.init_s)
