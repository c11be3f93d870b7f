"""What a deployment costs: instance-seconds integrated over time, by state, at a price per
accelerator-hour. Starting and draining instances hold their accelerators, so they cost too."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from hyperflexis.cluster.scaler.decision import INSTANCE_STATES, InstanceState, InstanceView

SECONDS_PER_HOUR = 3600.0


class CostMeter:
    """Integrates instance counts over time; the driver calls `update` whenever they change (and
    at the end). Counts hold from one update to the next."""

    def __init__(self, price_per_hour: float, num_accelerators_per_instance: int = 1) -> None:
        if price_per_hour < 0:
            raise ValueError(f"invalid 'price_per_hour': must be >= 0, got {price_per_hour}")
        if num_accelerators_per_instance < 1:
            raise ValueError("invalid 'num_accelerators_per_instance': must be >= 1")
        self.price_per_hour = price_per_hour  # USD per accelerator-hour
        self.num_accelerators_per_instance = num_accelerators_per_instance  # tensor parallelism
        self._last_s: float | None = None
        self._counts: dict[InstanceState, int] = dict.fromkeys(INSTANCE_STATES, 0)
        self._seconds: dict[InstanceState, float] = dict.fromkeys(INSTANCE_STATES, 0.0)

    def update(self, now: float, counts: Mapping[InstanceState, int]) -> None:
        """Charge the counts in force since the last update, then switch to `counts`."""
        if self._last_s is not None:
            if now < self._last_s:
                raise ValueError(f"invalid 'now': {now} is before the last update {self._last_s}")
            elapsed_s = now - self._last_s
            for state, count in self._counts.items():
                self._seconds[state] += count * elapsed_s
        for state, count in counts.items():
            if state not in INSTANCE_STATES:
                raise ValueError(f"invalid 'counts': unknown state {state!r}")
            if count < 0:
                raise ValueError(f"invalid 'counts': {state} count must be >= 0")
        self._counts = {state: int(counts.get(state, 0)) for state in INSTANCE_STATES}
        self._last_s = now

    def update_from(self, now: float, instances: Iterable[InstanceView]) -> None:
        counts: dict[InstanceState, int] = dict.fromkeys(INSTANCE_STATES, 0)
        for instance in instances:
            counts[instance.state] += 1
        self.update(now, counts)

    def instance_seconds(self, state: InstanceState | None = None) -> float:
        """Instance-seconds charged so far, in one state or all."""
        if state is None:
            return sum(self._seconds.values())
        if state not in INSTANCE_STATES:
            raise ValueError(f"invalid 'state': {state!r}; known: {INSTANCE_STATES}")
        return self._seconds[state]

    def cost_usd(self) -> float:
        accelerator_hours = (
            self.instance_seconds() * self.num_accelerators_per_instance / SECONDS_PER_HOUR
        )
        return accelerator_hours * self.price_per_hour
