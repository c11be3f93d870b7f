"""What the live instances cost, per pool (role): instance-seconds integrated over every process
that holds its machine (loading or serving), at a price per instance-hour (`--price-per-hour`).

One `CostMeter` per role, the simulator's: counts hold from one update to the next, so the
server updates whenever the instances change (one starts, is ready, exits) and at each scrape.
An instance counts as `starting` while its process runs and it is not ready yet (a replacement
loading), `active` while it serves.
"""

from __future__ import annotations

from collections.abc import Iterable

from hyperflexis.backends.local import InstanceHandle
from hyperflexis.cluster.scaler.cost import CostMeter
from hyperflexis.cluster.scaler.decision import INSTANCE_STATES, InstanceState
from hyperflexis.scheduler.config import Role

ROLES: tuple[Role, ...] = ("mixed", "prefill", "decode")


class PoolCost:
    """Instance-seconds and USD so far, by role."""

    def __init__(self, price_per_hour: float) -> None:
        self.price_per_hour = price_per_hour
        self.meters = {role: CostMeter(price_per_hour) for role in ROLES}

    def update(self, now: float, handles: Iterable[InstanceHandle]) -> None:
        """Charge the counts in force since the last update, then switch to `handles`' states
        (`now`: monotonic seconds)."""
        counts: dict[Role, dict[InstanceState, int]] = {
            role: dict.fromkeys(INSTANCE_STATES, 0) for role in ROLES
        }
        for handle in handles:
            state = _state(handle)
            if state is not None:
                counts[handle.role][state] += 1
        for role, meter in self.meters.items():
            meter.update(now, counts[role])

    def instance_seconds(self, role: Role) -> float:
        return self.meters[role].instance_seconds()

    def cost_usd(self, role: Role) -> float:
        return self.meters[role].cost_usd()


def _state(handle: InstanceHandle) -> InstanceState | None:
    if handle.alive:
        return "active"
    if handle.process.exitcode is None and handle.process.pid is not None:
        return "starting"  # its process runs, loading: it holds its machine
    return None
