"""The scaler's side of the elastic simulator (DESIGN.md §6): its modelled transition times and
the cluster sample kept per tick. The `ClusterView` and the checked decisions are the live
server's too (`cluster.lifecycle_decisions`). Nothing here touches the event queue."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from hyperflexis.cluster.lifecycle import Lifecycle
from hyperflexis.cluster.migration import DEFAULT_DRAIN_DEADLINE_S
from hyperflexis.cluster.scaler import PoolLimits
from hyperflexis.scheduler.config import Role
from hyperflexis.sim.elastic_result import ClusterSample


@dataclass(frozen=True, slots=True)
class ElasticTimes:
    """Modelled durations of the transitions a decision does not carry itself."""

    control_interval_s: float = 10.0  # how often the scaler decides
    role_switch_s: float = 1.0  # a drained instance's flip: re-plan its KV cache, no weights
    stop_s: float = 1.0  # a drained instance's shutdown (it still holds its accelerator)
    # With requests still unfinished this long after the last arrival, the run gives up (a
    # scaler that never provides a decode instance would otherwise tick forever).
    give_up_after_s: float = 3600.0
    # A drain's deadline after its decision (the server's `--drain-deadline-s`): decodes that
    # would outlive it move to another instance (`cluster.migration`); inf: none moves.
    drain_deadline_s: float = DEFAULT_DRAIN_DEADLINE_S
    # A new instance's time from the decision to serving, as executed (a live run's measured
    # start); None: the decision's own estimate (`cluster.scaler.startup`), which the scaler
    # plans with either way.
    start_s: float | None = None

    def __post_init__(self) -> None:
        if not self.control_interval_s > 0:
            raise ValueError("invalid elastic field 'control_interval_s': must be > 0")
        if self.start_s is not None and not self.start_s >= 0:
            raise ValueError("invalid elastic field 'start_s': must be >= 0")
        for name in ("role_switch_s", "stop_s", "give_up_after_s", "drain_deadline_s"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"invalid elastic field {name!r}: must be >= 0")


def cluster_sample(
    now: float, lifecycle: Lifecycle, pools: Mapping[Role, PoolLimits]
) -> ClusterSample:
    """Instances holding an accelerator, by role and by state."""
    by_role: dict[Role, int] = dict.fromkeys(pools, 0)
    by_state = {"starting": 0, "active": 0, "draining": 0}
    for life in lifecycle.lives.values():
        if life.state != "stopped":
            by_role[life.role] += 1
            by_state[life.state] += 1
    return ClusterSample(now, by_role, by_state)
