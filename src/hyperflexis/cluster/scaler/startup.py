"""How long a new instance takes to serve, by where its weights come from (DESIGN.md §7).

A live peer with the same model lends its weights device-to-device (NVLink/HCCS), else they come
from disk; either way the process then needs a fixed initialisation (allocator, KV cache, graph
capture), which no weight source saves.

That is the hardware spec's figure, a prediction before anything was measured. The driver
reports each start it carried out, decision to serving (`record`), and from the first one on the
prediction for that weight source is what the deployment measured: live on a CPU host a start is
the process and its imports (9-17 s) far more than the weights the spec counts (3.04 s on H100).
"""

from __future__ import annotations

import statistics
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from hyperflexis.cluster.scaler.decision import InstanceView, WeightSource
from hyperflexis.perf.specs import HardwareSpec, ModelSpec


@dataclass(frozen=True, slots=True)
class StartupPlan:
    """Where a new instance gets its weights and how long it takes to serve."""

    weight_source: WeightSource  # peer: device-to-device from a live instance; disk: safetensors
    peer_id: str | None  # the live instance copied from; None from disk
    weight_load_s: float  # predicted seconds to get the weights in place (the spec's)
    startup_s: float  # predicted seconds until it serves: measured, else weights + init
    basis: str = "spec"  # where startup_s comes from, for the decision's reason


class StartupModel:
    """Predicts start-up times: the median of the latest measured starts from the same weight
    source once there is one, else the hardware spec's bandwidths and the model's size.

    Why the median of the latest few (`num_recent`, default 5), not a running mean of all: a
    start's time scatters with the machine's load (9.0-17.3 s live on a shared host) and one
    slow start must not move the prediction far, which a median bears and a mean does not; the
    conditions drift (page cache, load), which only a recent window follows; and it is exact
    for identical starts, so a driver that feeds modelled start-ups (the simulator) predicts
    them to the bit.
    """

    def __init__(
        self,
        hardware: HardwareSpec,
        model: ModelSpec,
        init_s: float = 3.0,
        *,
        peer_copy: bool = True,
        num_recent: int = 5,
    ) -> None:
        if init_s < 0:
            raise ValueError(f"invalid 'init_s': must be >= 0, got {init_s}")
        if num_recent < 1:
            raise ValueError(f"invalid 'num_recent': must be >= 1, got {num_recent}")
        self.hardware = hardware
        self.model = model
        self.init_s = init_s  # fixed start-up work besides loading weights
        self.peer_copy = peer_copy  # the driver copies weights from live peers; False: disk only
        self.num_recent = num_recent
        self._measured: dict[WeightSource, deque[float]] = {}

    def record(self, source: WeightSource, startup_s: float) -> None:
        """A start from `source` served `startup_s` after its decision (fallbacks included)."""
        if not startup_s >= 0:
            raise ValueError(f"invalid 'startup_s': must be >= 0, got {startup_s}")
        recent = self._measured.setdefault(source, deque(maxlen=self.num_recent))
        recent.append(startup_s)

    def startup_s(self, source: WeightSource) -> tuple[float, str]:
        """Seconds from decision to serving for a start from `source`, and their basis."""
        recent = self._measured.get(source)
        if recent:
            starts = "1 start" if len(recent) == 1 else f"median of the last {len(recent)} starts"
            return statistics.median(recent), f"measured: {starts} from {source}"
        return self.weight_load_s(source) + self.init_s, "spec"

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
        if not peers or not self.peer_copy:
            return StartupPlan("disk", None, self.weight_load_s("disk"), *self.startup_s("disk"))
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
        return StartupPlan("peer", peer.instance_id, load_s, *self.startup_s("peer"))
