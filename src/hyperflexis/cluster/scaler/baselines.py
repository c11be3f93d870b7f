"""Baseline scalers, so experiments compare like with like: `static` (a fixed cluster, e.g.
provisioned for peak) and `threshold` (reactive, like a Kubernetes HPA on queue length and
utilisation: no forecast, no latency model, no role switches). They use the same start-up and
linking mechanics as `hyperflexis`, so only the policy differs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hyperflexis.cluster.scaler.actions import least_loaded, link_plan
from hyperflexis.cluster.scaler.base import Scaler, ScalerContext
from hyperflexis.cluster.scaler.decision import ClusterView, InstanceView, ScalingDecision
from hyperflexis.scheduler.config import Role


class StaticScaler(Scaler):
    """Keeps the cluster it was given: never acts."""

    name = "static"

    def _decide(self, now: float, view: ClusterView) -> list[ScalingDecision]:
        return []


@dataclass(frozen=True, slots=True)
class ThresholdScalerConfig:
    queue_high: float = 4.0  # waiting requests per active instance above which a pool grows
    queue_low: float = 0.5  # ... and below which (with low utilisation) it shrinks
    utilisation_high: float = 0.85  # KV usage or batch occupancy above which a pool grows
    utilisation_low: float = 0.3  # ... and below which (with a short queue) it shrinks
    cooldown_s: float = 60.0  # no action on a pool this soon after the last one (stabilisation)

    def __post_init__(self) -> None:
        if not 0 <= self.queue_low < self.queue_high:
            raise ValueError("invalid scaler field 'queue_low': must be in [0, queue_high)")
        if not 0 <= self.utilisation_low < self.utilisation_high <= 1:
            raise ValueError("invalid scaler field 'utilisation_low': need 0 <= low < high <= 1")
        if self.cooldown_s < 0:
            raise ValueError("invalid scaler field 'cooldown_s': must be >= 0")


class ThresholdScaler(Scaler):
    """One instance out when a pool's queue per instance or utilisation is above its high mark,
    one in when both are below their low marks; a cooldown after each action."""

    name = "threshold"
    config_type = ThresholdScalerConfig

    def __init__(self, context: ScalerContext, config: Any = None) -> None:
        self.config: ThresholdScalerConfig = config or ThresholdScalerConfig()
        super().__init__(context, config)
        self._last_action_s: dict[Role, float] = {}

    def _decide(self, now: float, view: ClusterView) -> list[ScalingDecision]:
        config = self.config
        members = self.tracker.planned_members(view)
        taken = {i.instance_id for i in view.instances} | self.tracker.pending_ids()
        links = link_plan(view, members)
        grow: list[tuple[Role, str]] = []
        shrink: list[tuple[InstanceView, str]] = []
        for role in sorted(view.pools):
            last = self._last_action_s.get(role)
            if last is not None and now - last < config.cooldown_s:
                continue
            snapshots = [
                i.snapshot
                for i in view.instances
                if i.role == role and i.state == "active" and i.snapshot is not None
            ]
            if not snapshots:
                continue
            queue = sum(s.num_waiting for s in snapshots) / len(snapshots)
            # Averaged over the pool, as an HPA averages its metric over the pods.
            occupancy = sum(s.num_running for s in snapshots) / len(snapshots)
            utilisation = max(
                sum(s.kv_usage for s in snapshots) / len(snapshots),
                occupancy / self.context.scheduler_config.max_num_seqs,
            )
            limits = view.limits(role)
            planned = len(members.get(role, []))
            arithmetic = (
                f"{role}: {queue:.2f} waiting per instance (high {config.queue_high}, low "
                f"{config.queue_low}), utilisation {utilisation:.2f} (high "
                f"{config.utilisation_high}, low {config.utilisation_low}), planned {planned}"
            )
            if queue > config.queue_high or utilisation > config.utilisation_high:
                if planned < limits.max_instances:
                    grow.append((role, f"scale out {arithmetic}"))
            elif (
                queue < config.queue_low
                and utilisation < config.utilisation_low
                and planned > limits.min_instances
            ):
                candidates = least_loaded(view, role, self.tracker.is_free)
                if candidates:
                    shrink.append((candidates[0], f"scale in {arithmetic}"))
        # Shrink first, so new instances are linked only to partners that stay.
        decisions = [self.actions.scale_in(now, i, links, why) for i, why in shrink]
        decisions += [
            self.actions.scale_out(now, view, role, links, taken, why) for role, why in grow
        ]
        for decision in decisions:
            self._last_action_s[decision.role] = now
        return decisions
